/* cli.c — `ragkv bench`: placeholder until the benchmarks land (issues 3, 4, 10). */
#include <stdio.h>

#include "ragkv/cli.h"

int bench_cli_main(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "ragkv %s: no benchmarks are built yet in this version\n", argv[0]);
    return 2;
}
