/*
 * A streaming chat in C against libqwen.so.
 *
 *   gcc -std=c11 -I include examples/c/chat.c -L target/release -lqwen \
 *       -Wl,-rpath,$PWD/target/release -o chat
 *   ./chat -m model.gguf -p "Write a haiku about the sea"     # one turn
 *   ./chat -m model.gguf                                       # one turn per stdin line
 *
 * Options: -n max tokens per reply (default 256), -s system prompt, -t threads, -c context,
 * --temp temperature, --seed seed.
 */
#include "qwen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int32_t print_piece(const char *piece, size_t len, int32_t token, void *user_data) {
    (void)token;
    (void)user_data;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0; /* 0: go on; nonzero would stop the reply */
}

static int fail(const char *what) {
    fprintf(stderr, "error: %s: %s\n", what, qwen_last_error());
    return 1;
}

static int turn(qwen_session *s, const char *text, int max_tokens) {
    if (qwen_session_chat(s, text, strlen(text)) != QWEN_OK) return fail("chat");
    int32_t n = qwen_session_generate(s, max_tokens, print_piece, NULL);
    if (n < 0) return fail("generate");
    static const char *reasons[] = {"none", "stop", "length", "aborted"};
    int32_t why = qwen_session_finish_reason(s);
    printf("\n");
    fprintf(stderr, "[%d tokens, finish: %s]\n", n, why >= 0 && why <= 3 ? reasons[why] : "?");
    return 0;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *system = NULL;
    int max_tokens = 256;
    qwen_model_params mp = qwen_model_default_params();
    qwen_session_params sp = qwen_session_default_params();
    qwen_sampling_params smp = qwen_sampling_default_params();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "usage: %s -m MODEL [-p PROMPT] [-n N] [-s SYSTEM] [-t THREADS] "
                            "[-c CTX] [--temp T] [--seed S]\n", argv[0]);
            return 2;
        }
        i++;
        if (!strcmp(a, "-m")) model_path = v;
        else if (!strcmp(a, "-p")) prompt = v;
        else if (!strcmp(a, "-s")) system = v;
        else if (!strcmp(a, "-n")) max_tokens = atoi(v);
        else if (!strcmp(a, "-t")) sp.n_threads = atoi(v);
        else if (!strcmp(a, "-c")) sp.n_ctx = atoi(v);
        else if (!strcmp(a, "--temp")) smp.temperature = (float)atof(v);
        else if (!strcmp(a, "--seed")) smp.seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
    }
    if (!model_path) {
        fprintf(stderr, "usage: %s -m MODEL [-p PROMPT] ...\n", argv[0]);
        return 2;
    }
    if ((qwen_abi_version() >> 16) != QWEN_ABI_VERSION_MAJOR) {
        fprintf(stderr, "libqwen ABI %u does not match this program's %u\n",
                qwen_abi_version() >> 16, QWEN_ABI_VERSION_MAJOR);
        return 1;
    }

    qwen_model *model = qwen_model_load(model_path, &mp);
    if (!model) return fail("load");
    qwen_model_info info;
    qwen_model_get_info(model, &info);
    fprintf(stderr, "libqwen %s: %s, %d layers, vocabulary %d\n", qwen_version_string(),
            info.arch, info.n_layer, info.n_vocab);

    int rc = 0;
    qwen_session *session = qwen_session_new(model, &sp);
    if (!session) {
        rc = fail("session");
        goto out;
    }
    if (system && qwen_session_set_system_prompt(session, system, strlen(system)) != QWEN_OK) {
        rc = fail("system prompt");
        goto out;
    }
    if (qwen_session_set_sampling(session, &smp) != QWEN_OK) {
        rc = fail("sampling");
        goto out;
    }
    if (prompt) {
        rc = turn(session, prompt, max_tokens);
    } else {
        char line[8192];
        while (!rc && fgets(line, sizeof line, stdin)) {
            line[strcspn(line, "\r\n")] = '\0';
            if (line[0]) rc = turn(session, line, max_tokens);
        }
    }
out:
    qwen_session_free(session);
    qwen_model_free(model);
    return rc;
}
