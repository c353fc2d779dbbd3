/* cli.c — `ragkv blend`: placeholder until blending lands (issue 5). */
#include <stdio.h>

#include "ragkv/cli.h"

int bl_cli_main(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "ragkv %s: blending is not built yet in this version\n", argv[0]);
    return 2;
}
