/* test_gpu_decode.c — the CUDA decoder against the CPU decoder, bit for bit, for every codec
 * and both 16-bit output types; damaged streams are errors on the GPU too. Needs a device. */
#include <stdlib.h>
#include <criterion/criterion.h>

#include "codec_testlib.h"
#include "testutil.h"

#ifdef RAGKV_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

static void need_device(void)
{
    if (!codec_cuda_available())
        cr_skip_test("skipped: no CUDA device");
}

#ifdef RAGKV_HAVE_CUDA
/* Decode on both sides and compare. */
static void compare(const rk_buf *b, const codec_decode_opts *o, codec_dtype dt)
{
    codec_info info;
    cr_assert_eq(codec_inspect(b->data, b->len, &info), RK_OK);
    size_t nb = codec_decoded_bytes(&info, dt);
    uint16_t *cpu = rk_malloc(nb), *gpu = rk_malloc(nb);
    void *dev;
    cr_assert_eq(cudaMalloc(&dev, nb), cudaSuccess);
    cr_assert_eq(codec_decode(b->data, b->len, o, dt, cpu, nb), RK_OK, "%s", rk_error_msg());
    rk_status st = codec_decode_cuda(b->data, b->len, o, dt, dev, nb, NULL);
    cr_assert_eq(st, RK_OK, "%s: %s", rk_strerror(st), rk_error_msg());
    cr_assert_eq(cudaMemcpy(gpu, dev, nb, cudaMemcpyDeviceToHost), cudaSuccess);
    cr_assert_eq(memcmp(cpu, gpu, nb), 0, "%s dtype %d: CUDA output differs from the CPU's",
                 codec_id_name(info.codec), (int)dt);
    cudaFree(dev);
    rk_free(cpu);
    rk_free(gpu);
}
#endif

#ifdef RAGKV_HAVE_CUDA
/* The reader over b: layer ranges of 1, 2, 3, ... layers enqueued from the last layer down,
 * each by its own call into its place in one device buffer, give codec_decode's bytes; the
 * legacy stream sees them after a wait, without a host wait for the reader. upload: 0, the
 * ranges copy their own bytes up; 1, every layer copied up first
 * (codec_cuda_reader_upload), twice; 2, the upper half first, so that ranges of copied and
 * not yet copied layers mix. */
static void compare_ranges_up(const rk_buf *b, const codec_decode_opts *o, codec_dtype dt, int upload)
{
    codec_info info;
    cr_assert_eq(codec_inspect(b->data, b->len, &info), RK_OK);
    int L = (int)info.shape.n_layers;
    size_t nb = codec_decoded_bytes(&info, dt), lb = nb / (size_t)L;
    uint8_t *cpu = rk_malloc(nb), *gpu = rk_malloc(nb), *dev;
    cr_assert_eq(codec_decode(b->data, b->len, o, dt, cpu, nb), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(cudaMalloc((void **)&dev, nb), cudaSuccess);
    cr_assert_eq(cudaMemset(dev, 0xff, nb), cudaSuccess);
    /* the reader's stream is non-blocking: not ordered after the legacy stream's memset */
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    codec_cuda_reader *r;
    rk_status st = codec_cuda_reader_open(b->data, b->len, o, dt, -1, &r);
    cr_assert_eq(st, RK_OK, "%s: %s", codec_id_name(info.codec), rk_error_msg());
    cr_assert_eq(codec_cuda_reader_info(r)->shape.n_layers, info.shape.n_layers);
    cr_assert_eq(codec_cuda_reader_wait(r, L - 1, 1, NULL), RK_ERR_INVALID,
                 "waiting for a layer nobody enqueued must be refused");
    cr_assert_eq(codec_cuda_reader_upload(r, 0, L + 1), RK_ERR_INVALID);
    cr_assert_eq(codec_cuda_reader_upload(r, -1, 1), RK_ERR_INVALID);
    cr_assert_eq(codec_cuda_reader_upload(r, L, 1), RK_ERR_INVALID);
    if (upload == 1)
        for (int k = 0; k < 2; k++)
            cr_assert_eq(codec_cuda_reader_upload(r, 0, L), RK_OK, "%s", rk_error_msg());
    if (upload == 2)
        cr_assert_eq(codec_cuda_reader_upload(r, L / 2, L - L / 2), RK_OK, "%s", rk_error_msg());
    for (int hi = L, n = 1; hi > 0; n++) {
        int l0 = hi - n < 0 ? 0 : hi - n;
        st = codec_cuda_reader_decode_layers(r, l0, hi - l0, dev + (size_t)l0 * lb, (size_t)(hi - l0) * lb);
        cr_assert_eq(st, RK_OK, "%s", rk_error_msg());
        hi = l0;
    }
    cr_assert_eq(codec_cuda_reader_decode_layers(r, L - 1, 2, dev, nb), RK_ERR_INVALID);
    cr_assert_eq(codec_cuda_reader_decode_layers(r, 0, 1, dev, lb - 1), RK_ERR_INVALID);
    cr_assert_eq(codec_cuda_reader_wait(r, 0, L, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(cudaMemcpy(gpu, dev, nb, cudaMemcpyDeviceToHost), cudaSuccess);
    cr_assert_eq(memcmp(cpu, gpu, nb), 0, "%s dtype %d upload %d: reader output differs from the CPU's",
                 codec_id_name(info.codec), (int)dt, upload);
    /* another stream may wait too (the layers of a range share an event, and a repeated wait
     * is skipped only for the stream that made it) and sees the same bytes */
    cudaStream_t s2;
    cr_assert_eq(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(codec_cuda_reader_wait(r, 0, L, s2), RK_OK, "%s", rk_error_msg());
    memset(gpu, 0, nb);
    cr_assert_eq(cudaMemcpyAsync(gpu, dev, nb, cudaMemcpyDeviceToHost, s2), cudaSuccess);
    cr_assert_eq(cudaStreamSynchronize(s2), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(s2), cudaSuccess);
    cr_assert_eq(memcmp(cpu, gpu, nb), 0, "%s dtype %d upload %d: a second stream's view differs",
                 codec_id_name(info.codec), (int)dt, upload);
    cr_assert_eq(codec_cuda_reader_finish(r), RK_OK, "%s", rk_error_msg());
    codec_cuda_reader_close(r);
    cudaFree(dev);
    rk_free(cpu);
    rk_free(gpu);
}

static void compare_ranges(const rk_buf *b, const codec_decode_opts *o, codec_dtype dt)
{
    for (int upload = 0; upload < 3; upload++)
        compare_ranges_up(b, o, dt, upload);
}
#endif

Test(gpu_decode, identical_to_cpu_all_codecs)
{
    need_device();
#ifdef RAGKV_HAVE_CUDA
    codec_shape shapes[] = {{3, 1, 2, 8}, {4, 300, 2, 16}, {2, 257, 3, 5}, {32, 256, 8, 128}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        float *kv = synth(shapes[k], 3 + k);
        for (int c = 0; c < N_CODECS; c++)
            for (int lv = 0; lv <= 4; lv++) {
                int maxl;
                codec_levels(all_codecs[c], NULL, &maxl);
                if (lv > maxl)
                    break;
                rk_buf b = enc(kv, shapes[k], all_codecs[c], lv);
                compare(&b, NULL, CODEC_F16);
                compare(&b, NULL, CODEC_BF16);
                rk_buf_free(&b);
            }
        /* delta coding and token scales */
        codec_params p = codec_params_default(CODEC_CACHEGEN);
        p.anchor_interval = 10;
        p.k_scale_mode = CODEC_SCALE_TOKEN;
        rk_buf b = RK_BUF_INIT;
        cr_assert_eq(codec_encode(kv, &shapes[k], &p, &b), RK_OK);
        compare(&b, NULL, CODEC_F16);
        rk_buf_free(&b);
        rk_free(kv);
    }
#endif
}

Test(gpu_decode, codebook_container)
{
    need_device();
#ifdef RAGKV_HAVE_CUDA
    codec_shape s = {4, 200, 2, 16};
    float *kv = synth(s, 77);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    codec_codebook *cb;
    const float *samples[1] = {kv};
    cr_assert_eq(codec_codebook_train(samples, &s, 1, &p, &cb), RK_OK);
    p.codebook = cb;
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK);
    codec_decode_opts o = {.codebook = cb};
    compare(&b, &o, CODEC_F16);
    rk_buf_free(&b);
    codec_codebook_free(cb);
    rk_free(kv);
#endif
}

/* Containers of a transform codebook (docs/codec.md, "Transform coding"): the coefficient
 * kernel with reconstruction points, then the transform kernel; blocks of the whole head
 * (16), of 8 and of 64 channels (head_dim 128), both output types. */
Test(gpu_decode, transform_codebook_container)
{
    need_device();
#ifdef RAGKV_HAVE_CUDA
    struct {
        codec_shape s;
        int block, predict_k;
    } cases[] = {{{4, 300, 2, 16}, 16, 0}, {{3, 200, 3, 16}, 8, 0}, {{2, 256, 4, 128}, 64, 0},
                 {{2, 256, 4, 16}, 64, 0} /* a block over every head */, {{3, 100, 4, 8}, 32, 0},
                 {{2, 256, 4, 16}, 64, 1} /* K from V: decoded on the CPU, copied up */};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        codec_shape s = cases[k].s;
        float *tr = synth(s, 90 + k), *kv = synth(s, 95 + k);
        size_t nw = (size_t)s.n_layers * 2 * s.n_kv_heads * s.head_dim;
        float *w = rk_malloc(nw * sizeof *w);
        cr_assert_not_null(w);
        for (size_t i = 0; i < nw; i++)
            w[i] = (float)(1 + i % 9);
        codec_params p = codec_params_default(CODEC_CACHEGEN);
        p.weights = w;
        p.transform_block = cases[k].block;
        p.predict_k = cases[k].predict_k;
        codec_codebook *cb;
        const float *samples[1] = {tr};
        cr_assert_eq(codec_codebook_train(samples, &s, 1, &p, &cb), RK_OK, "%s", rk_error_msg());
        rk_buf b = enc_cb(kv, s, cb);
        codec_decode_opts o = {.codebook = cb};
        compare(&b, &o, CODEC_F16);
        compare(&b, &o, CODEC_BF16);
        compare_ranges(&b, &o, CODEC_BF16); /* the transform kernel range by range */
        rk_buf_free(&b);
        codec_codebook_free(cb);
        rk_free(w);
        rk_free(tr);
        rk_free(kv);
    }
#endif
}

Test(gpu_decode, damaged_input_is_an_error)
{
    need_device();
#ifdef RAGKV_HAVE_CUDA
    codec_shape s = {2, 40, 2, 8};
    float *kv = synth(s, 5);
    rk_buf b = enc(kv, s, CODEC_CACHEGEN, 1);
    size_t nb = codec_shape_values(&s) * 2;
    void *dev;
    cr_assert_eq(cudaMalloc(&dev, nb), cudaSuccess);
    b.data[b.len - 3] ^= 0x10;
    cr_assert_eq(codec_decode_cuda(b.data, b.len, NULL, CODEC_F16, dev, nb, NULL), RK_ERR_CORRUPT);
    cr_assert_eq(codec_decode_cuda(b.data, b.len - 1, NULL, CODEC_F16, dev, nb, NULL),
                 RK_ERR_TRUNCATED);
    cr_assert_eq(codec_decode_cuda(b.data, b.len, NULL, CODEC_F32, dev, nb * 2, NULL),
                 RK_ERR_INVALID);
    cudaFree(dev);
    rk_buf_free(&b);
    rk_free(kv);
#endif
}

Test(gpu_decode, reader_ranges_identical_to_cpu)
{
    need_device();
#ifdef RAGKV_HAVE_CUDA
    codec_shape shapes[] = {{5, 300, 2, 16}, {32, 256, 8, 128}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        float *kv = synth(shapes[k], 11 + k);
        for (int c = 0; c < N_CODECS; c++) {
            rk_buf b = enc(kv, shapes[k], all_codecs[c], -1);
            compare_ranges(&b, NULL, CODEC_F16);
            compare_ranges(&b, NULL, CODEC_BF16);
            rk_buf_free(&b);
        }
        rk_free(kv);
    }
    /* stream groups of 128 channels, wider than the kernel takes: decoded on the CPU, copied up */
    {
        codec_shape s = {3, 100, 2, 128};
        float *kv = synth(s, 43);
        codec_params p = codec_params_default(CODEC_CACHEGEN);
        p.group = 128;
        rk_buf b = RK_BUF_INIT;
        cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK, "%s", rk_error_msg());
        compare_ranges(&b, NULL, CODEC_BF16);
        compare(&b, NULL, CODEC_F16);
        rk_buf_free(&b);
        rk_free(kv);
    }
#endif
}

/* After codec_cuda_reader_upload of every layer (and a host wait), the reader reads nothing
 * more of the container's bytes for the paths that stage them (cachegen, q8, raw into bf16):
 * the container is overwritten, and decoding layer by layer still gives codec_decode's bytes
 * of the original. */
Test(gpu_decode, uploaded_layers_are_not_read_again)
{
    need_device();
#ifdef RAGKV_HAVE_CUDA
    codec_shape s = {32, 256, 8, 128};
    float *kv = synth(s, 29);
    codec_id ids[] = {CODEC_CACHEGEN, CODEC_Q8, CODEC_RAW};
    for (size_t c = 0; c < sizeof ids / sizeof ids[0]; c++) {
        rk_buf b = enc(kv, s, ids[c], -1);
        size_t nb = codec_shape_values(&s) * 2, lb = nb / s.n_layers;
        uint8_t *cpu = rk_malloc(nb), *gpu = rk_malloc(nb), *copy = rk_malloc(b.len), *dev;
        cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_BF16, cpu, nb), RK_OK, "%s", rk_error_msg());
        memcpy(copy, b.data, b.len);
        cr_assert_eq(cudaMalloc((void **)&dev, nb), cudaSuccess);
        codec_cuda_reader *r;
        cr_assert_eq(codec_cuda_reader_open(copy, b.len, NULL, CODEC_BF16, -1, &r), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(codec_cuda_reader_upload(r, 0, (int)s.n_layers), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(codec_cuda_reader_finish(r), RK_OK, "%s", rk_error_msg());
        memset(copy, 0x5a, b.len);
        for (uint32_t l = 0; l < s.n_layers; l++)
            cr_assert_eq(codec_cuda_reader_decode_layers(r, (int)l, 1, dev + l * lb, lb), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(codec_cuda_reader_finish(r), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(cudaMemcpy(gpu, dev, nb, cudaMemcpyDeviceToHost), cudaSuccess);
        cr_assert_eq(memcmp(cpu, gpu, nb), 0, "%s: a layer was read again from the container after its upload",
                     codec_id_name(ids[c]));
        codec_cuda_reader_close(r);
        cudaFree(dev);
        rk_free(cpu);
        rk_free(gpu);
        rk_free(copy);
        rk_buf_free(&b);
    }
    rk_free(kv);
#endif
}

/* Readers with cudaMalloc / cudaFree instead of the stream-ordered pool (RAGKV_CODEC_CUDA_POOL=0,
 * read once per process; Criterion runs each test in its own): every codec, both output
 * types, whole containers and layer ranges, still identical to the CPU decoder. */
Test(gpu_decode, without_the_memory_pool)
{
    need_device();
#ifdef RAGKV_HAVE_CUDA
    cr_assert_eq(setenv("RAGKV_CODEC_CUDA_POOL", "0", 1), 0);
    codec_shape s = {32, 256, 8, 128};
    float *kv = synth(s, 17);
    for (int c = 0; c < N_CODECS; c++) {
        rk_buf b = enc(kv, s, all_codecs[c], -1);
        compare(&b, NULL, CODEC_BF16);
        compare_ranges(&b, NULL, CODEC_F16);
        rk_buf_free(&b);
    }
    rk_free(kv);
#endif
}

/* A malformed entropy-coded stream behind valid checksums: the reader opens (only decoding
 * can find it) and finish reports it. */
Test(gpu_decode, reader_finish_reports_a_malformed_stream)
{
    need_device();
#ifdef RAGKV_HAVE_CUDA
    codec_shape s = {4, 300, 2, 16};
    float *kv = synth(s, 21);
    rk_buf b = enc(kv, s, CODEC_CACHEGEN, 1);
    size_t ilen;
    section(b.data, 4, &ilen);
    move_last_byte(&b, ilen / 4 / 2);
    reseal(b.data);
    size_t nb = codec_shape_values(&s) * 2, lb = nb / s.n_layers;
    void *dev;
    cr_assert_eq(cudaMalloc(&dev, nb), cudaSuccess);
    codec_cuda_reader *r;
    cr_assert_eq(codec_cuda_reader_open(b.data, b.len, NULL, CODEC_F16, 0, &r), RK_OK, "%s", rk_error_msg());
    for (uint32_t l = 0; l < s.n_layers; l++)
        cr_assert_eq(codec_cuda_reader_decode_layers(r, (int)l, 1, (uint8_t *)dev + l * lb, lb), RK_OK);
    cr_assert_eq(codec_cuda_reader_finish(r), RK_ERR_CORRUPT);
    codec_cuda_reader_close(r);
    /* and the one-call decoder says the same */
    cr_assert_eq(codec_decode_cuda(b.data, b.len, NULL, CODEC_F16, dev, nb, NULL), RK_ERR_CORRUPT);
    cudaFree(dev);
    rk_buf_free(&b);
    rk_free(kv);
#endif
}

/* Without a CUDA device the whole file skips at once (rk_test_main_unless). */
static bool device_here(void) { return codec_cuda_available(); }

int main(int argc, char *argv[])
{
    return rk_test_main_unless(argc, argv, device_here, "codec_test_gpu_decode", "no CUDA device here");
}
