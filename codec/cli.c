/* cli.c — `ragkv codec`: placeholder until the codec lands (issue 4). */
#include <stdio.h>

#include "ragkv/cli.h"

int codec_cli_main(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "ragkv %s: the codec is not built yet in this version\n", argv[0]);
    return 2;
}
