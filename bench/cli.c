/* cli.c — `ragkv bench`: dispatch to the benchmarks each module implements. */
#include <stdio.h>
#include <string.h>

#include "ragkv/chunkcache.h"
#include "ragkv/codec.h"
#include "ragkv/bench.h"
#include "ragkv/cli.h"

struct bench {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
};

static const struct bench benches[] = {
    {"engine", bench_engine_main, "engine prefill and decode-step times on a backend (synthetic shapes or a model)"},
    {"codec", codec_bench_main, "KV codec encode/decode throughput and size (--cuda: the GPU decoder)"},
    {"blend", bench_blend_main, "time to first token of blended prompts per mode, caches compressed in host RAM"},
    {"serve", bench_serve_main, "load a running ragkvd: tenants, Zipf chunk popularity, TTFT, throughput, hit rate"},
    {"store", cc_bench_main, "chunk store put/get throughput and latency vs redis-server SET/GET"},
};
#define NBENCH (sizeof(benches) / sizeof(benches[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: ragkv bench NAME [ARGS...]   ('ragkv bench NAME --help')\n\nBenchmarks:\n");
    for (size_t i = 0; i < NBENCH; i++)
        fprintf(f, "  %-8s %s\n", benches[i].name, benches[i].help);
}

int bench_cli_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < NBENCH; i++)
        if (!strcmp(argv[1], benches[i].name))
            return benches[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "ragkv bench: unknown benchmark '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
