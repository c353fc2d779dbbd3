/*
 * ragkv/cli.h — entry points of the `ragkv` tool's subcommands.
 *
 * The `ragkv` executable (clients/bin/ragkv.c) only dispatches: each module implements its
 * own subcommands next to its code, so a module's CLI is built and tested with it.
 * Each returns the process exit status (0 ok, 1 failure, 2 usage error); argv[0] is the
 * subcommand name ("generate", "model", ...).
 */
#ifndef RAGKV_CLI_H
#define RAGKV_CLI_H

#ifdef __cplusplus
extern "C" {
#endif

int eng_cli_generate(int argc, char **argv); /* engine/: ragkv generate (plain prompts) */
int bl_cli_generate(int argc, char **argv);  /* blend/: ragkv generate, with --chunk prompts */
int eng_cli_model(int argc, char **argv);    /* engine/: ragkv model convert|synth|info */
int codec_cli_main(int argc, char **argv);   /* codec/:  ragkv codec encode|decode|... */
int bl_cli_main(int argc, char **argv);      /* blend/:  ragkv blend ... */
int bench_cli_main(int argc, char **argv);   /* bench/:  ragkv bench ... */

#ifdef __cplusplus
}
#endif
#endif
