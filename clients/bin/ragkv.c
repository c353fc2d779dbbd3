/* ragkv — local tools. Dispatches to the subcommands each module implements (ragkv/cli.h). */
#include <stdio.h>
#include <string.h>

#include "ragkv/bench.h"
#include "ragkv/cli.h"
#include "ragkv/version.h"

struct subcommand {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
};

static const struct subcommand subcommands[] = {
    {"generate", bl_cli_generate, "generate text with a model; --chunk/--blend for blended RAG prompts"},
    {"model", eng_cli_model, "model tools: info, convert (llama2.c -> Hugging Face), synth"},
    {"codec", codec_cli_main, "KV codec tools: encode, decode, train-codebook, eval"},
    {"blend", bl_cli_main, "blend chunk caches for a prompt and measure fidelity"},
    {"bench", bench_cli_main, "benchmarks"},
};
#define NSUB (sizeof(subcommands) / sizeof(subcommands[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: ragkv COMMAND [ARGS...]\n\nragkv %s local tools. Commands:\n", RAGKV_VERSION);
    for (size_t i = 0; i < NSUB; i++)
        fprintf(f, "  %-10s %s\n", subcommands[i].name, subcommands[i].help);
    fprintf(f, "  %-10s %s\n\n'ragkv COMMAND --help' describes each.\n", "version", "print the version");
}

int main(int argc, char **argv)
{
    /* codec/ cannot depend on the engine: hand it the engine-backed model source here */
    codec_eval_set_model_source(bench_codec_model_source);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("ragkv %s\n", RAGKV_VERSION);
        return 0;
    }
    for (size_t i = 0; i < NSUB; i++)
        if (!strcmp(argv[1], subcommands[i].name))
            return subcommands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "ragkv: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
