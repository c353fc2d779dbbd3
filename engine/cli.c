/* cli.c — `ragkv generate` and `ragkv model`: placeholders until the engine lands (issue 2). */
#include <stdio.h>

#include "ragkv/cli.h"

int eng_cli_generate(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "ragkv %s: the engine is not built yet in this version\n", argv[0]);
    return 2;
}

int eng_cli_model(int argc, char **argv)
{
    return eng_cli_generate(argc, argv);
}
