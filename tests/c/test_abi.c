/*
 * The C ABI test harness: normal use and misuse of include/qwen.h, in C, as a C program sees
 * the library. Compiled and run by tests/ffi_c.rs (also under valgrind).
 *
 *   test_abi                      misuse that needs no model
 *   test_abi TINY.gguf            + everything on the tiny synthetic model
 *   test_abi TINY.gguf REAL.gguf  + a chat turn on the real Qwen2.5 model
 *
 * Prints one line per failed check and a closing "N passed, N failed" line; exits 1 on failure.
 */
#define _POSIX_C_SOURCE 200809L
#include "qwen.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int passed, failed;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (cond) {                                                                        \
            passed++;                                                                      \
        } else {                                                                           \
            failed++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    qwen_last_error());                                                    \
        }                                                                                  \
    } while (0)

#define CHECK_RC(expr, want)                                                                \
    do {                                                                                    \
        long long rc_ = (long long)(expr);                                                  \
        if (rc_ == (long long)(want)) {                                                     \
            passed++;                                                                       \
        } else {                                                                            \
            failed++;                                                                       \
            fprintf(stderr, "FAIL %s:%d: %s returned %lld, want %lld (last error: %s)\n",   \
                    __FILE__, __LINE__, #expr, rc_, (long long)(want), qwen_last_error());  \
        }                                                                                   \
    } while (0)

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------- no model needed */

static void test_version_and_errors(void) {
    CHECK(qwen_abi_version() == QWEN_ABI_VERSION);
    CHECK((qwen_abi_version() >> 16) == QWEN_ABI_VERSION_MAJOR);
    CHECK(strlen(qwen_version_string()) > 0);
    CHECK(qwen_last_error() != NULL);
    CHECK(strcmp(qwen_status_name(QWEN_ERR_BUSY), "QWEN_ERR_BUSY") == 0);
    CHECK(strcmp(qwen_status_name(12345), "unknown status") == 0);

    qwen_model_params mp = qwen_model_default_params();
    CHECK(mp.backend == QWEN_BACKEND_CPU && mp.kv_type == QWEN_KV_F32);
    qwen_session_params sp = qwen_session_default_params();
    CHECK(sp.n_ctx == 0 && sp.n_threads == 0 && sp.max_batch == 0);
    qwen_sampling_params smp = qwen_sampling_default_params();
    CHECK(smp.temperature == 0.0f && smp.top_p == 1.0f && smp.repetition_penalty == 1.0f);
}

static void test_misuse_without_model(const char *dir) {
    /* Loading: NULL path, missing file, a file that is not GGUF. */
    CHECK(qwen_model_load(NULL, NULL) == NULL);
    CHECK(strstr(qwen_last_error(), "NULL") != NULL);
    CHECK(qwen_model_load("/nonexistent/model.gguf", NULL) == NULL);
    CHECK_RC(qwen_last_status(), QWEN_ERR_IO);
    CHECK(strstr(qwen_last_error(), "/nonexistent/model.gguf") != NULL);
    char junk[4096];
    snprintf(junk, sizeof junk, "%s/junk.gguf", dir);
    FILE *f = fopen(junk, "wb");
    CHECK(f != NULL);
    if (f) {
        fputs("this is not a GGUF file at all, just text", f);
        fclose(f);
        CHECK(qwen_model_load(junk, NULL) == NULL);
        CHECK(strlen(qwen_last_error()) > 0);
        remove(junk);
    }

    /* A successful call clears the message. */
    CHECK(qwen_model_load(NULL, NULL) == NULL);
    CHECK(strlen(qwen_last_error()) > 0);
    qwen_model_info info;
    CHECK_RC(qwen_model_get_info(NULL, &info), QWEN_ERR_INVALID_HANDLE);

    /* NULL handles everywhere: a status, never a crash. */
    int32_t ids[4];
    char buf[16];
    float logits[4];
    double ppl;
    CHECK_RC(qwen_tokenize(NULL, "hi", 2, false, ids, 4), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_detokenize(NULL, ids, 0, false, buf, sizeof buf), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_token_to_piece(NULL, 0, buf, sizeof buf), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_model_n_vocab(NULL), QWEN_ERR_INVALID_HANDLE);
    CHECK(qwen_session_new(NULL, NULL) == NULL);
    CHECK_RC(qwen_session_chat(NULL, "hi", 2), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_prompt(NULL, "hi", 2, false), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_generate(NULL, 1, NULL, NULL), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_next_token(NULL, ids), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_abort(NULL), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_reset(NULL), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_logits(NULL, logits, 4), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_perplexity(NULL, ids, 2, &ppl), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_save_state(NULL, NULL, 0), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_eval_all_logits(NULL, ids, 1, NULL, 0), QWEN_ERR_INVALID_HANDLE);

    /* A pointer that was never a handle is recognised as such. */
    int not_a_handle = 0;
    CHECK_RC(qwen_model_n_vocab((const qwen_model *)&not_a_handle), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_reset((qwen_session *)&not_a_handle), QWEN_ERR_INVALID_HANDLE);

    /* Freeing NULL is a no-op that reports nothing. */
    qwen_model_free(NULL);
    qwen_session_free(NULL);
    CHECK(strlen(qwen_last_error()) == 0);
    CHECK_RC(qwen_abi_version(), QWEN_ABI_VERSION);
    CHECK_RC(qwen_model_n_vocab(NULL), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_last_status(), QWEN_ERR_INVALID_HANDLE);
}

/* ---------------------------------------------------------------- tiny model */

static void test_load_params(const char *path) {
    qwen_model_params p = qwen_model_default_params();
    p.backend = QWEN_BACKEND_CUDA;
    CHECK(qwen_model_load(path, &p) == NULL);
    CHECK(strstr(qwen_last_error(), "CUDA") != NULL);
    p = qwen_model_default_params();
    p.kv_type = 9;
    CHECK(qwen_model_load(path, &p) == NULL);
    CHECK_RC(qwen_last_status(), QWEN_ERR_INVALID_ARGUMENT);
    p = qwen_model_default_params();
    p.device = -1;
    CHECK(qwen_model_load(path, &p) == NULL);
    /* The reduced-memory KV caches load and give sessions of that type. */
    const int32_t kv_types[2] = {QWEN_KV_F16, QWEN_KV_Q8};
    for (int i = 0; i < 2; i++) {
        p = qwen_model_default_params();
        p.kv_type = kv_types[i];
        qwen_model *m = qwen_model_load(path, &p);
        CHECK(m != NULL);
        if (!m) continue;
        qwen_session *s = qwen_session_new(m, NULL);
        CHECK(s != NULL);
        int32_t id = 1;
        if (s) CHECK_RC(qwen_session_eval(s, &id, 1), QWEN_OK);
        qwen_session_free(s);
        qwen_model_free(m);
    }
    p = qwen_model_default_params();
    p.backend = 77;
    CHECK(qwen_model_load(path, &p) == NULL);
    p = qwen_model_default_params();
    p.n_threads = -1;
    CHECK(qwen_model_load(path, &p) == NULL);
}

static void test_model_info(qwen_model *m) {
    qwen_model_info info;
    CHECK_RC(qwen_model_get_info(m, &info), QWEN_OK);
    CHECK(strcmp(info.arch, "qwen2") == 0);
    CHECK(info.n_vocab == 276);
    CHECK(info.n_layer == 2 && info.n_embd == 64 && info.n_head == 4 && info.n_head_kv == 2);
    CHECK(info.n_ctx_train == 4096);
    CHECK(info.has_tokenizer);
    CHECK(info.n_params > 0 && info.weight_bytes == 4 * info.n_params);
    CHECK_RC(qwen_model_get_info(m, NULL), QWEN_ERR_INVALID_ARGUMENT);
    CHECK_RC(qwen_model_n_vocab(m), 276);
}

static void test_tokenizer(qwen_model *m) {
    const char *text = "hello world<|im_end|>";
    size_t len = strlen(text);

    /* Size query, then too small, then exact. */
    int32_t need = qwen_tokenize(m, text, len, false, NULL, 0);
    CHECK(need > 0);
    int32_t ids[64];
    int32_t small[2] = {-7, -7};
    CHECK_RC(qwen_tokenize(m, text, len, false, small, 1), need);
    CHECK(small[0] >= 0 && small[1] == -7); /* only `capacity` ids are written */
    CHECK_RC(qwen_tokenize(m, text, len, false, ids, 64), need);
    CHECK(ids[0] == small[0]);

    /* parse_special: the control token becomes one id only when asked. */
    int32_t im_end = qwen_token_special_id(m, "<|im_end|>", 10);
    CHECK(im_end == 275);
    int32_t sp[64];
    int32_t nsp = qwen_tokenize(m, text, len, true, sp, 64);
    CHECK(nsp > 0 && nsp < need && sp[nsp - 1] == im_end);
    for (int i = 0; i < need; i++) CHECK(ids[i] != im_end);
    CHECK(qwen_token_is_special(m, im_end));
    CHECK(!qwen_token_is_special(m, 'a'));
    CHECK(!qwen_token_is_special(m, -5));
    CHECK_RC(qwen_token_special_id(m, "<|nope|>", 8), QWEN_ERR_TOKENIZER);

    /* Round trip, with size negotiation on the text. */
    char out[128];
    int32_t tl = qwen_detokenize(m, ids, (size_t)need, false, NULL, 0);
    CHECK_RC(tl, (int32_t)len);
    char tiny[6];
    memset(tiny, 'X', sizeof tiny);
    CHECK_RC(qwen_detokenize(m, ids, (size_t)need, false, tiny, 5), (int32_t)len);
    CHECK(memcmp(tiny, "hello", 5) == 0 && tiny[5] == 'X'); /* no NUL when it does not fit */
    CHECK_RC(qwen_detokenize(m, ids, (size_t)need, false, out, sizeof out), (int32_t)len);
    CHECK(strcmp(out, text) == 0);
    CHECK_RC(qwen_detokenize(m, sp, (size_t)nsp, true, out, sizeof out), 11);
    CHECK(strcmp(out, "hello world") == 0);

    /* Pieces. */
    CHECK_RC(qwen_token_to_piece(m, 'a', out, sizeof out), 1);
    CHECK(strcmp(out, "a") == 0);
    CHECK_RC(qwen_token_to_piece(m, im_end, out, sizeof out), 10);
    CHECK(strcmp(out, "<|im_end|>") == 0);

    /* Misuse: bad ids, NULL text with a length, NULL buffer with a capacity, bad UTF-8. */
    int32_t bad[2] = {1, 276};
    CHECK_RC(qwen_detokenize(m, bad, 2, false, out, sizeof out), QWEN_ERR_INVALID_ARGUMENT);
    CHECK(strstr(qwen_last_error(), "276") != NULL);
    bad[1] = -1;
    CHECK_RC(qwen_detokenize(m, bad, 2, false, out, sizeof out), QWEN_ERR_INVALID_ARGUMENT);
    CHECK_RC(qwen_token_to_piece(m, 100000, out, sizeof out), QWEN_ERR_INVALID_ARGUMENT);
    CHECK_RC(qwen_tokenize(m, NULL, 3, false, ids, 64), QWEN_ERR_INVALID_ARGUMENT);
    CHECK_RC(qwen_tokenize(m, NULL, 0, false, ids, 64), 0);
    CHECK_RC(qwen_tokenize(m, "abc", 3, false, NULL, 10), QWEN_ERR_INVALID_ARGUMENT);
    CHECK_RC(qwen_tokenize(m, "a\xff", 2, false, ids, 64), QWEN_ERR_INVALID_ARGUMENT);
    CHECK(strstr(qwen_last_error(), "UTF-8") != NULL);
    CHECK_RC(qwen_detokenize(m, NULL, 1, false, out, sizeof out), QWEN_ERR_INVALID_ARGUMENT);
}

typedef struct {
    char text[4096];
    size_t len;
    int tokens;
    int flushes; /* calls with token == -1 */
    int stop_after;
    qwen_session *session;
    int abort_at;   /* call qwen_session_abort at this token (0 = never) */
    int reenter_rc; /* what a re-entrant call on the same session returned */
} collect;

static int32_t on_piece(const char *piece, size_t n, int32_t token, void *user_data) {
    collect *c = (collect *)user_data;
    if (piece[n] != '\0') return 1; /* must be NUL-terminated */
    if (c->len + n < sizeof c->text) {
        memcpy(c->text + c->len, piece, n);
        c->len += n;
        c->text[c->len] = '\0';
    }
    if (token < 0) {
        c->flushes++;
        return 0;
    }
    c->tokens++;
    if (c->session && c->tokens == 1) c->reenter_rc = qwen_session_reset(c->session);
    if (c->abort_at && c->tokens == c->abort_at) qwen_session_abort(c->session);
    return c->stop_after && c->tokens >= c->stop_after;
}

static qwen_session *new_session(qwen_model *m, int n_ctx) {
    qwen_session_params sp = qwen_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = 1;
    sp.max_batch = 16;
    qwen_session *s = qwen_session_new(m, &sp);
    CHECK(s != NULL);
    return s;
}

/* Greedy continuation of `prompt` by pulling `n` tokens; returns how many came. */
static int pull(qwen_session *s, const char *prompt, int n, int32_t *out, char *text, size_t cap) {
    CHECK_RC(qwen_session_reset(s), QWEN_OK);
    CHECK_RC(qwen_session_prompt(s, prompt, strlen(prompt), false), QWEN_OK);
    size_t len = 0;
    int got = 0;
    text[0] = '\0';
    for (int i = 0; i < n; i++) {
        int32_t tok = -1;
        int32_t rc = qwen_session_next_token(s, &tok);
        if (rc != QWEN_OK) {
            CHECK_RC(rc, QWEN_DONE);
            break;
        }
        out[got++] = tok;
        char piece[64];
        int32_t pl = qwen_session_last_piece(s, piece, sizeof piece);
        CHECK(pl >= 0 && pl < (int32_t)sizeof piece);
        if (pl > 0 && len + (size_t)pl < cap) {
            memcpy(text + len, piece, (size_t)pl);
            len += (size_t)pl;
            text[len] = '\0';
        }
    }
    return got;
}

static void test_generation(qwen_model *m) {
    qwen_session *s = new_session(m, 128);
    if (!s) return;
    CHECK_RC(qwen_session_n_ctx(s), 128);

    /* Before any prompt there is nothing to generate from. */
    int32_t tok;
    CHECK_RC(qwen_session_next_token(s, &tok), QWEN_ERR_INVALID_ARGUMENT);
    CHECK_RC(qwen_session_logits(s, NULL, 0), QWEN_ERR_INVALID_ARGUMENT);

    /* Callback style: 8 tokens, then the same by pulling: identical (greedy). */
    const char *prompt = "hello world";
    CHECK_RC(qwen_session_prompt(s, prompt, strlen(prompt), false), QWEN_OK);
    int32_t n_prompt = qwen_session_tokens(s, NULL, 0);
    CHECK(n_prompt > 0);
    collect c;
    memset(&c, 0, sizeof c);
    CHECK_RC(qwen_session_generate(s, 8, on_piece, &c), 8);
    CHECK(c.tokens == 8);
    CHECK_RC(qwen_session_finish_reason(s), QWEN_FINISH_LENGTH);
    /* After the end, a generation only reports that it is done. */
    CHECK_RC(qwen_session_next_token(s, &tok), QWEN_DONE);
    CHECK_RC(qwen_session_generate(s, 8, on_piece, &c), 0);

    int32_t pulled[8];
    char text[4096];
    CHECK_RC(pull(s, prompt, 8, pulled, text, sizeof text), 8);
    /* The pulled text is a prefix of the streamed one (held-back bytes come at the end). */
    CHECK(strncmp(c.text, text, strlen(text)) == 0);
    CHECK_RC(qwen_session_finish_reason(s), QWEN_FINISH_NONE);
    /* The last pulled token is evaluated lazily: 7 of the 8 are in the cache. */
    CHECK_RC(qwen_session_tokens(s, NULL, 0), n_prompt + 7);

    /* The callback's nonzero return stops; a NULL callback is allowed. */
    memset(&c, 0, sizeof c);
    c.stop_after = 3;
    CHECK_RC(qwen_session_prompt(s, " again", 6, false), QWEN_OK);
    CHECK_RC(qwen_session_generate(s, 0, on_piece, &c), 3);
    CHECK_RC(qwen_session_finish_reason(s), QWEN_FINISH_STOP);
    CHECK_RC(qwen_session_prompt(s, " more", 5, false), QWEN_OK);
    CHECK_RC(qwen_session_generate(s, 2, NULL, NULL), 2);
    CHECK_RC(qwen_session_generate(s, -1, NULL, NULL), QWEN_ERR_INVALID_ARGUMENT);

    /* Re-entrant use from the callback is refused with BUSY, abort from the callback works. */
    memset(&c, 0, sizeof c);
    c.session = s;
    c.abort_at = 2;
    c.reenter_rc = 12345;
    CHECK_RC(qwen_session_prompt(s, prompt, strlen(prompt), false), QWEN_OK);
    CHECK_RC(qwen_session_generate(s, 0, on_piece, &c), QWEN_ERR_ABORTED);
    CHECK(c.reenter_rc == QWEN_ERR_BUSY);
    CHECK(c.tokens == 2);
    CHECK_RC(qwen_session_finish_reason(s), QWEN_FINISH_ABORTED);
    /* An abort requested while idle does not cancel the next prompt. */
    CHECK_RC(qwen_session_abort(s), QWEN_OK);
    CHECK_RC(qwen_session_prompt(s, prompt, strlen(prompt), false), QWEN_OK);
    CHECK_RC(qwen_session_generate(s, 1, NULL, NULL), 1);

    /* Stop strings: stop before the text of the 5th token; it is never handed out. */
    int32_t ids[8];
    CHECK_RC(pull(s, prompt, 8, ids, text, sizeof text), 8);
    char piece5[64];
    int32_t p5 = qwen_token_to_piece(m, ids[4], piece5, sizeof piece5);
    CHECK(p5 > 0);
    char full[4096];
    int32_t nfull = qwen_detokenize(m, ids, 8, false, full, sizeof full);
    char *at = strstr(full, piece5);
    CHECK(at != NULL);
    if (at) {
        CHECK_RC(qwen_session_add_stop_string(s, piece5, (size_t)p5), QWEN_OK);
        CHECK_RC(qwen_session_add_stop_string(s, "", 0), QWEN_ERR_INVALID_ARGUMENT);
        CHECK_RC(qwen_session_reset(s), QWEN_OK);
        CHECK_RC(qwen_session_prompt(s, prompt, strlen(prompt), false), QWEN_OK);
        memset(&c, 0, sizeof c);
        CHECK(qwen_session_generate(s, 8, on_piece, &c) <= 5);
        CHECK_RC(qwen_session_finish_reason(s), QWEN_FINISH_STOP);
        CHECK(c.len == (size_t)(at - full));
        CHECK(strncmp(c.text, full, c.len) == 0);
        CHECK_RC(qwen_session_clear_stop_strings(s), QWEN_OK);
    }
    (void)nfull;

    /* Sampling parameters: validated; a seed reproduces its tokens. */
    qwen_sampling_params smp = qwen_sampling_default_params();
    smp.temperature = -1.0f;
    CHECK_RC(qwen_session_set_sampling(s, &smp), QWEN_ERR_INVALID_ARGUMENT);
    smp = qwen_sampling_default_params();
    smp.top_p = 0.0f;
    CHECK_RC(qwen_session_set_sampling(s, &smp), QWEN_ERR_INVALID_ARGUMENT);
    smp = qwen_sampling_default_params();
    smp.temperature = 0.9f;
    smp.top_k = 40;
    smp.top_p = 0.95f;
    smp.repetition_penalty = 1.1f;
    smp.seed = 42;
    int32_t a[6], b[6];
    CHECK_RC(qwen_session_set_sampling(s, &smp), QWEN_OK);
    CHECK_RC(pull(s, prompt, 6, a, text, sizeof text), 6);
    CHECK_RC(qwen_session_set_sampling(s, &smp), QWEN_OK);
    CHECK_RC(pull(s, prompt, 6, b, text, sizeof text), 6);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK_RC(qwen_session_set_sampling(s, NULL), QWEN_OK);

    /* The context fills: an eval that does not fit changes nothing; generation ends by length. */
    int32_t many[200];
    for (int i = 0; i < 200; i++) many[i] = 'a' + i % 26;
    CHECK_RC(qwen_session_reset(s), QWEN_OK);
    CHECK_RC(qwen_session_eval(s, many, 200), QWEN_ERR_CONTEXT_FULL);
    CHECK_RC(qwen_session_tokens(s, NULL, 0), 0);
    CHECK_RC(qwen_session_eval(s, many, 120), QWEN_OK);
    /* 8 tokens fill the cache; a 9th is sampled from the logits after the last of them. */
    CHECK_RC(qwen_session_generate(s, 0, NULL, NULL), 9);
    CHECK_RC(qwen_session_finish_reason(s), QWEN_FINISH_LENGTH);
    CHECK_RC(qwen_session_tokens(s, NULL, 0), 128);
    CHECK_RC(qwen_session_eval(s, many, 0), QWEN_ERR_INVALID_ARGUMENT);
    int32_t oov = 9999;
    CHECK_RC(qwen_session_truncate(s, 10), QWEN_OK);
    CHECK_RC(qwen_session_eval(s, &oov, 1), QWEN_ERR_INVALID_ARGUMENT);
    CHECK_RC(qwen_session_tokens(s, NULL, 0), 10);
    int32_t first[4];
    CHECK_RC(qwen_session_tokens(s, first, 4), 10);
    CHECK(memcmp(first, many, sizeof first) == 0);

    qwen_session_free(s);
}

static void test_logits_and_perplexity(qwen_model *m) {
    qwen_session *s = new_session(m, 64);
    if (!s) return;
    int32_t ids[5] = {'h', 'e', 'l', 'l', 'o'};
    int32_t nv = qwen_model_n_vocab(m);

    /* All logits: size query first; a too-small buffer evaluates nothing. */
    int64_t need = qwen_session_eval_all_logits(s, ids, 5, NULL, 0);
    CHECK(need == 5LL * nv);
    CHECK_RC(qwen_session_tokens(s, NULL, 0), 0);
    float *all = malloc((size_t)need * sizeof(float));
    CHECK_RC(qwen_session_eval_all_logits(s, ids, 5, all, (size_t)need), need);
    CHECK_RC(qwen_session_tokens(s, NULL, 0), 5);

    /* The last row equals the logits after the last token, and eval one by one agrees. */
    float *last = malloc((size_t)nv * sizeof(float));
    CHECK_RC(qwen_session_logits(s, NULL, 0), nv);
    CHECK_RC(qwen_session_logits(s, last, (size_t)nv), nv);
    CHECK(memcmp(last, all + 4 * nv, (size_t)nv * sizeof(float)) == 0);
    CHECK_RC(qwen_session_reset(s), QWEN_OK);
    for (int i = 0; i < 5; i++) CHECK_RC(qwen_session_eval(s, ids + i, 1), QWEN_OK);
    CHECK_RC(qwen_session_logits(s, last, (size_t)nv), nv);
    float maxdiff = 0;
    for (int i = 0; i < nv; i++) {
        float d = last[i] - all[4 * nv + i];
        if (d < 0) d = -d;
        if (d > maxdiff) maxdiff = d;
    }
    CHECK(maxdiff < 1e-3f);

    /* Perplexity: finite, > 1, deterministic; needs 2 tokens and an out pointer. */
    double p1 = 0, p2 = 0;
    CHECK_RC(qwen_session_perplexity(s, ids, 5, &p1), QWEN_OK);
    CHECK_RC(qwen_session_perplexity(s, ids, 5, &p2), QWEN_OK);
    CHECK(p1 > 1.0 && p1 < 1e6 && p1 == p2);
    CHECK_RC(qwen_session_perplexity(s, ids, 1, &p1), QWEN_ERR_INVALID_ARGUMENT);
    CHECK_RC(qwen_session_perplexity(s, ids, 5, NULL), QWEN_ERR_INVALID_ARGUMENT);

    free(all);
    free(last);
    qwen_session_free(s);
}

static void test_chat_and_state(qwen_model *m) {
    qwen_session *s = new_session(m, 256);
    if (!s) return;
    CHECK_RC(qwen_session_set_system_prompt(s, "Be brief.", 9), QWEN_OK);
    const char *q1 = "hello <|im_end|> is plain text here";
    collect c;
    memset(&c, 0, sizeof c);
    CHECK_RC(qwen_session_chat(s, q1, strlen(q1)), QWEN_OK);
    CHECK_RC(qwen_session_generate(s, 6, on_piece, &c), 6);
    CHECK_RC(qwen_session_history_len(s), 1);
    /* The typed <|im_end|> is text: the cache holds exactly 5 control tokens so far
       (system start/end, user start/end, assistant start). */
    int32_t toks[256];
    int32_t nt = qwen_session_tokens(s, toks, 256);
    CHECK(nt > 0 && nt <= 256);
    int specials = 0;
    for (int i = 0; i < nt && i < 256; i++) specials += qwen_token_is_special(m, toks[i]);
    CHECK(specials == 5);

    /* Second turn reuses the cached prefix. */
    memset(&c, 0, sizeof c);
    CHECK_RC(qwen_session_chat(s, "and again", 9), QWEN_OK);
    CHECK_RC(qwen_session_generate(s, 4, on_piece, &c), 4);
    CHECK_RC(qwen_session_history_len(s), 2);

    /* Save, continue greedily; restore into a fresh session and continue: same tokens. */
    CHECK_RC(qwen_session_chat(s, "third", 5), QWEN_OK);
    int32_t size = qwen_session_save_state(s, NULL, 0);
    CHECK(size > 0);
    uint8_t *state = malloc((size_t)size);
    CHECK_RC(qwen_session_save_state(s, state, (size_t)size - 1), size); /* too small: nothing */
    CHECK_RC(qwen_session_save_state(s, state, (size_t)size), size);
    int32_t a[4], b[4];
    for (int i = 0; i < 4; i++) CHECK_RC(qwen_session_next_token(s, &a[i]), QWEN_OK);

    qwen_session *s2 = new_session(m, 256);
    CHECK_RC(qwen_session_load_state(s2, state, (size_t)size), QWEN_OK);
    CHECK_RC(qwen_session_history_len(s2), 2);
    for (int i = 0; i < 4; i++) CHECK_RC(qwen_session_next_token(s2, &b[i]), QWEN_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);

    /* Corrupt or foreign state is refused. */
    CHECK_RC(qwen_session_load_state(s2, state, 3), QWEN_ERR_FORMAT);
    state[0] = 'X';
    CHECK_RC(qwen_session_load_state(s2, state, (size_t)size), QWEN_ERR_FORMAT);
    state[0] = 'Q';
    state[8] ^= 1; /* n_vocab */
    CHECK_RC(qwen_session_load_state(s2, state, (size_t)size), QWEN_ERR_FORMAT);
    CHECK_RC(qwen_session_load_state(s2, NULL, 10), QWEN_ERR_INVALID_ARGUMENT);
    /* A state too long for a smaller context. */
    state[8] ^= 1;
    qwen_session *small = new_session(m, 16);
    CHECK_RC(qwen_session_load_state(small, state, (size_t)size), QWEN_ERR_CONTEXT_FULL);

    /* A message longer than the context. */
    char big[2048];
    memset(big, 'x', sizeof big);
    for (size_t i = 1; i < sizeof big; i += 2) big[i] = ' ';
    CHECK_RC(qwen_session_chat(small, big, sizeof big), QWEN_ERR_CONTEXT_FULL);

    free(state);
    qwen_session_free(small);
    qwen_session_free(s2);
    qwen_session_free(s);
}

static void test_lifetimes(const char *path) {
    qwen_model *m = qwen_model_load(path, NULL);
    CHECK(m != NULL);
    if (!m) return;
    qwen_session *s = new_session(m, 64);
    /* Wrong kinds. */
    CHECK_RC(qwen_model_n_vocab((const qwen_model *)s), QWEN_ERR_INVALID_HANDLE);
    CHECK(strstr(qwen_last_error(), "qwen_session") != NULL);
    CHECK_RC(qwen_session_reset((qwen_session *)m), QWEN_ERR_INVALID_HANDLE);
    /* The model may be freed first: the session keeps it alive. */
    qwen_model_free(m);
    CHECK(strlen(qwen_last_error()) == 0);
    CHECK_RC(qwen_model_n_vocab(m), QWEN_ERR_INVALID_HANDLE);
    CHECK_RC(qwen_session_prompt(s, "hello", 5, false), QWEN_OK);
    CHECK_RC(qwen_session_generate(s, 3, NULL, NULL), 3);
    qwen_session_free(s);
    /* Use and free after free are detected. */
    CHECK_RC(qwen_session_generate(s, 3, NULL, NULL), QWEN_ERR_INVALID_HANDLE);
    CHECK(strstr(qwen_last_error(), "freed") != NULL);
    qwen_session_free(s);
    CHECK(strstr(qwen_last_error(), "not a live qwen_session") != NULL);
    qwen_model_free(m);
    CHECK(strstr(qwen_last_error(), "not a live qwen_model") != NULL);
}

/* ---------------------------------------------------------------- threads */

typedef struct {
    qwen_model *model;
    int32_t ids[16];
    int n;
    int rc;
} worker;

static void *concurrent_worker(void *arg) {
    worker *w = (worker *)arg;
    qwen_session_params sp = qwen_session_default_params();
    sp.n_ctx = 64;
    sp.n_threads = 1;
    qwen_session *s = qwen_session_new(w->model, &sp);
    if (!s) {
        w->rc = -100;
        return NULL;
    }
    w->rc = qwen_session_prompt(s, "hello world", 11, false);
    for (w->n = 0; w->rc == QWEN_OK && w->n < 12; w->n++)
        w->rc = qwen_session_next_token(s, &w->ids[w->n]);
    /* Tokenizing on the shared model from every thread at once. */
    int32_t ids[16];
    for (int i = 0; i < 50 && w->rc == QWEN_OK; i++)
        if (qwen_tokenize(w->model, "the world is", 12, false, ids, 16) <= 0) w->rc = -101;
    qwen_session_free(s);
    return NULL;
}

static void test_concurrent_sessions(qwen_model *m) {
    enum { N = 4 };
    pthread_t th[N];
    worker w[N];
    memset(w, 0, sizeof w);
    for (int i = 0; i < N; i++) {
        w[i].model = m;
        CHECK(pthread_create(&th[i], NULL, concurrent_worker, &w[i]) == 0);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) {
        CHECK_RC(w[i].rc, QWEN_OK);
        CHECK(w[i].n == 12);
        CHECK(memcmp(w[i].ids, w[0].ids, sizeof w[0].ids) == 0);
    }
}

typedef struct {
    qwen_session *s;
    atomic_int started;
    atomic_int release;
    int rc;
} gen_thread;

static int32_t wait_for_release(const char *piece, size_t n, int32_t token, void *ud) {
    (void)piece;
    (void)n;
    (void)token;
    gen_thread *g = (gen_thread *)ud;
    atomic_store(&g->started, 1);
    while (!atomic_load(&g->release)) sleep_ms(1);
    return 0;
}

static void *generate_thread(void *arg) {
    gen_thread *g = (gen_thread *)arg;
    g->rc = qwen_session_generate(g->s, 0, wait_for_release, g);
    return NULL;
}

static void test_abort_and_busy_from_another_thread(qwen_model *m) {
    qwen_session *s = new_session(m, 256);
    if (!s) return;
    CHECK_RC(qwen_session_prompt(s, "hello", 5, false), QWEN_OK);
    gen_thread g;
    g.s = s;
    atomic_init(&g.started, 0);
    atomic_init(&g.release, 0);
    g.rc = 12345;
    pthread_t th;
    CHECK(pthread_create(&th, NULL, generate_thread, &g) == 0);
    while (!atomic_load(&g.started)) sleep_ms(1);
    /* The generating thread holds the session: other calls are refused, abort is not. */
    CHECK_RC(qwen_session_reset(s), QWEN_ERR_BUSY);
    CHECK_RC(qwen_session_next_token(s, NULL), QWEN_ERR_BUSY);
    CHECK_RC(qwen_session_abort(s), QWEN_OK);
    atomic_store(&g.release, 1);
    pthread_join(th, NULL);
    CHECK_RC(g.rc, QWEN_ERR_ABORTED);
    CHECK_RC(qwen_session_finish_reason(s), QWEN_FINISH_ABORTED);

    /* Freeing a session while another thread generates: that generation is aborted and the
       memory is released when it returns (valgrind checks both). */
    CHECK_RC(qwen_session_prompt(s, "hello", 5, false), QWEN_OK);
    atomic_store(&g.started, 0);
    atomic_store(&g.release, 0);
    CHECK(pthread_create(&th, NULL, generate_thread, &g) == 0);
    while (!atomic_load(&g.started)) sleep_ms(1);
    qwen_session_free(s);
    atomic_store(&g.release, 1);
    pthread_join(th, NULL);
    CHECK_RC(g.rc, QWEN_ERR_ABORTED);
}

/* ---------------------------------------------------------------- real model */

static void test_real_model(const char *path) {
    qwen_model_params mp = qwen_model_default_params();
    mp.n_threads = 2;
    qwen_model *m = qwen_model_load(path, &mp);
    CHECK(m != NULL);
    if (!m) return;
    qwen_model_info info;
    CHECK_RC(qwen_model_get_info(m, &info), QWEN_OK);
    CHECK(info.n_vocab == 151936 && info.n_layer == 24);
    /* Known ids of the Qwen2.5 vocabulary. */
    int32_t ids[8];
    CHECK_RC(qwen_tokenize(m, "Hello world", 11, false, ids, 8), 2);
    CHECK(ids[0] == 9707 && ids[1] == 1879);
    CHECK_RC(qwen_token_special_id(m, "<|im_end|>", 10), 151645);

    qwen_session_params sp = qwen_session_default_params();
    sp.n_ctx = 256;
    qwen_session *s = qwen_session_new(m, &sp);
    CHECK(s != NULL);
    const char *q = "What is 2+2? Answer with one number.";
    collect c;
    memset(&c, 0, sizeof c);
    CHECK_RC(qwen_session_chat(s, q, strlen(q)), QWEN_OK);
    int32_t n = qwen_session_generate(s, 16, on_piece, &c);
    CHECK(n > 0);
    CHECK_RC(qwen_session_finish_reason(s), QWEN_FINISH_STOP); /* ended by <|im_end|> */
    CHECK(strchr(c.text, '4') != NULL);
    printf("real model replied: %s\n", c.text);
    qwen_session_free(s);
    qwen_model_free(m);
}

int main(int argc, char **argv) {
    const char *tmp = getenv("TMPDIR");
    test_version_and_errors();
    test_misuse_without_model(tmp ? tmp : "/tmp");
    if (argc > 1) {
        const char *tiny = argv[1];
        test_load_params(tiny);
        qwen_model_params mp = qwen_model_default_params();
        mp.n_threads = 1;
        qwen_model *m = qwen_model_load(tiny, &mp);
        CHECK(m != NULL);
        if (m) {
            test_model_info(m);
            test_tokenizer(m);
            test_generation(m);
            test_logits_and_perplexity(m);
            test_chat_and_state(m);
            test_concurrent_sessions(m);
            test_abort_and_busy_from_another_thread(m);
            qwen_model_free(m);
        }
        test_lifetimes(tiny);
    }
    if (argc > 2) test_real_model(argv[2]);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
