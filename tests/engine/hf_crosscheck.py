#!/usr/bin/env python3
"""hf_crosscheck.py — compare ragkv's CPU engine with Hugging Face transformers on model folders.

Not part of CTest (needs torch + transformers, which the GPU machine's image has). For each
folder it feeds the same token ids to transformers' AutoModelForCausalLM (float32, eager
attention) and to `ragkv generate --tokens-in ... --logits-out ...` (greedy), then compares
the logits of every generated position and the greedy tokens.

    python3 tests/engine/hf_crosscheck.py build/clients/ragkv DIR [DIR...]
    # e.g. folders from: ragkv model convert ../shared/models/stories260K.bin /tmp/s260
    #                    ragkv model synth --shape test-qwen2 --seed 1 --out /tmp/q
Exit status 0 when every folder agrees (relative error <= 1e-4 and identical tokens).
"""
import os
import struct
import subprocess
import sys
import tempfile


def ragkv_run(ragkv, folder, prompt, steps, tmp):
    tin = os.path.join(tmp, "in.txt")
    tout = os.path.join(tmp, "out.txt")
    lout = os.path.join(tmp, "logits.bin")
    with open(tin, "w") as f:
        f.write("".join(f"{t}\n" for t in prompt))
    subprocess.run([ragkv, "generate", "--model", folder, "--tokens-in", tin, "--steps", str(steps),
                    "--tokens-out", tout, "--logits-out", lout], check=True, stdout=subprocess.DEVNULL)
    toks = [int(x) for x in open(tout).read().split()]
    raw = open(lout, "rb").read()
    return toks, raw


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    import torch
    from transformers import AutoModelForCausalLM

    ragkv, folders = sys.argv[1], sys.argv[2:]
    bad = 0
    for folder in folders:
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32,
                                                     attn_implementation="eager")
        model.eval()
        vocab = model.config.vocab_size
        prompt = [model.config.bos_token_id or 1] + [(7 * i + 5) % (vocab - 3) + 3 for i in range(6)]
        steps = min(48, model.config.max_position_embeddings)
        with tempfile.TemporaryDirectory() as tmp:
            toks, raw = ragkv_run(ragkv, folder, prompt, steps, tmp)
        rows = len(raw) // (4 * vocab)
        ours = torch.tensor(struct.unpack(f"<{rows * vocab}f", raw)).view(rows, vocab)
        with torch.no_grad():
            ref = model(torch.tensor([toks])).logits[0].float()
        # row r of ours chose token toks[len(prompt) + r], from position len(prompt) - 1 + r
        first = len(prompt) - 1
        n = min(rows, ref.shape[0] - first)
        diff = (ours[:n] - ref[first:first + n]).abs().max().item()
        scale = ref[first:first + n].abs().max().item()
        rel = diff / max(scale, 1e-3)
        ref_greedy = ref[first:first + n].argmax(-1).tolist()
        our_greedy = toks[len(prompt):len(prompt) + n]
        same = ref_greedy[:len(our_greedy)] == our_greedy
        ok = rel <= 1e-4 and same
        bad += not ok
        print(f"{folder}: {n} positions, max relative logit error {rel:.3g}, "
              f"greedy tokens {'identical' if same else 'DIFFER'} -> {'ok' if ok else 'FAIL'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
