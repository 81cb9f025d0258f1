// libqwen for C++17: a header-only RAII wrapper over the C ABI in qwen.h.
//
// - Model and Session are move-only handles; their destructors free the C handles.
// - Failures throw qwen::Error (status code + the library's message). Functions marked
//   noexcept never fail.
// - Text goes in as std::string_view (UTF-8, no NUL terminator needed), comes out as
//   std::string. Streaming is a std::function called per piece; an exception thrown by it stops
//   generation and is rethrown from generate() (it never crosses the C boundary).
// - Threading is the C API's: a Model may be shared by threads (as const Model&); a Session
//   serves one call at a time, abort() may be called from any thread.
//
//   qwen::Model model("qwen2.5-0.5b-instruct-q4_k_m.gguf");
//   qwen::Session chat(model);
//   chat.chat("Hello!");
//   chat.generate(256, [](std::string_view piece, int32_t) { std::cout << piece; return true; });
#pragma once

#include "qwen.h"

#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qwen {

// A failed libqwen call: status() is the QWEN_ERR_* code, what() the library's message.
class Error : public std::runtime_error {
public:
    Error(int32_t status, const std::string &message)
        : std::runtime_error(message), status_(status) {}
    int32_t status() const noexcept { return status_; }

private:
    int32_t status_;
};

namespace detail {
[[noreturn]] inline void raise(int32_t status) {
    const char *msg = qwen_last_error();
    throw Error(status, std::string(qwen_status_name(status)) + ": " + (msg ? msg : ""));
}
inline int32_t check(int32_t rc) {
    if (rc < 0) raise(rc);
    return rc;
}
inline int64_t check(int64_t rc) {
    if (rc < 0) raise(static_cast<int32_t>(rc));
    return rc;
}

// Buffer-size negotiation: call fill(buf, capacity) until the reported size fits.
template <typename T, typename Fill>
std::vector<T> negotiate(Fill fill, size_t guess) {
    std::vector<T> out(guess);
    for (;;) {
        int32_t n = check(fill(out.data(), out.size()));
        if (static_cast<size_t>(n) <= out.size()) {
            out.resize(static_cast<size_t>(n));
            return out;
        }
        out.resize(static_cast<size_t>(n));
    }
}

inline std::string negotiate_text(const std::function<int32_t(char *, size_t)> &fill,
                                  size_t guess = 64) {
    std::string out(guess, '\0');
    for (;;) {
        int32_t n = check(fill(out.data(), out.size()));
        if (static_cast<size_t>(n) < out.size()) {  // fits with its NUL
            out.resize(static_cast<size_t>(n));
            return out;
        }
        out.resize(static_cast<size_t>(n) + 1);
    }
}
}  // namespace detail

inline uint32_t abi_version() noexcept { return qwen_abi_version(); }

inline qwen_model_params default_model_params() noexcept { return qwen_model_default_params(); }
inline qwen_session_params default_session_params() noexcept {
    return qwen_session_default_params();
}
inline qwen_sampling_params default_sampling_params() noexcept {
    return qwen_sampling_default_params();
}

// A loaded model. Thread-safe: share it (const Model&) between threads and sessions.
class Model {
public:
    explicit Model(const std::string &path,
                   const qwen_model_params &params = qwen_model_default_params())
        : handle_(qwen_model_load(path.c_str(), &params)) {
        if (!handle_) detail::raise(qwen_last_status());
    }
    ~Model() { qwen_model_free(handle_); }
    Model(Model &&o) noexcept : handle_(std::exchange(o.handle_, nullptr)) {}
    Model &operator=(Model &&o) noexcept {
        if (this != &o) {
            qwen_model_free(handle_);
            handle_ = std::exchange(o.handle_, nullptr);
        }
        return *this;
    }
    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;

    qwen_model *get() const noexcept { return handle_; }

    qwen_model_info info() const {
        qwen_model_info i{};
        detail::check(qwen_model_get_info(handle_, &i));
        return i;
    }
    int32_t n_vocab() const { return detail::check(qwen_model_n_vocab(handle_)); }

    // parse_special = false for anything a user typed: "<|im_end|>" stays plain text.
    std::vector<int32_t> tokenize(std::string_view text, bool parse_special = false) const {
        return detail::negotiate<int32_t>(
            [&](int32_t *buf, size_t cap) {
                return qwen_tokenize(handle_, text.data(), text.size(), parse_special, buf, cap);
            },
            text.size() / 2 + 8);
    }
    std::string detokenize(const std::vector<int32_t> &ids, bool skip_special = false) const {
        return detail::negotiate_text([&](char *buf, size_t cap) {
            return qwen_detokenize(handle_, ids.data(), ids.size(), skip_special, buf, cap);
        }, ids.size() * 4 + 1);
    }
    std::string token_to_piece(int32_t token) const {
        return detail::negotiate_text(
            [&](char *buf, size_t cap) { return qwen_token_to_piece(handle_, token, buf, cap); });
    }
    int32_t special_token(std::string_view name) const {
        return detail::check(qwen_token_special_id(handle_, name.data(), name.size()));
    }

private:
    qwen_model *handle_;
};

// Why generation ended (qwen_session_finish_reason).
enum class Finish : int32_t {
    None = QWEN_FINISH_NONE,
    Stop = QWEN_FINISH_STOP,
    Length = QWEN_FINISH_LENGTH,
    Aborted = QWEN_FINISH_ABORTED,
};

// One conversation / sequence over a model. One call at a time (a concurrent call throws
// Error with status QWEN_ERR_BUSY); abort() may be called from any thread.
class Session {
public:
    // Receives each piece of text and its token (-1 for the final flush); return false to stop.
    using OnPiece = std::function<bool(std::string_view piece, int32_t token)>;

    explicit Session(const Model &model,
                     const qwen_session_params &params = qwen_session_default_params())
        : handle_(qwen_session_new(model.get(), &params)) {
        if (!handle_) detail::raise(qwen_last_status());
    }
    ~Session() { qwen_session_free(handle_); }
    Session(Session &&o) noexcept : handle_(std::exchange(o.handle_, nullptr)) {}
    Session &operator=(Session &&o) noexcept {
        if (this != &o) {
            qwen_session_free(handle_);
            handle_ = std::exchange(o.handle_, nullptr);
        }
        return *this;
    }
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;

    qwen_session *get() const noexcept { return handle_; }

    // Chat: set the system prompt, add a user turn, then generate() or next_token().
    void set_system_prompt(std::string_view text) {
        detail::check(qwen_session_set_system_prompt(handle_, text.data(), text.size()));
    }
    void chat(std::string_view user_text) {
        detail::check(qwen_session_chat(handle_, user_text.data(), user_text.size()));
    }
    int32_t history_len() const { return detail::check(qwen_session_history_len(handle_)); }

    // Raw completion: append text (or ids) to the sequence and start a generation.
    void prompt(std::string_view text, bool parse_special = false) {
        detail::check(qwen_session_prompt(handle_, text.data(), text.size(), parse_special));
    }
    void eval(const std::vector<int32_t> &ids) {
        detail::check(qwen_session_eval(handle_, ids.data(), ids.size()));
    }

    void set_sampling(const qwen_sampling_params &p) {
        detail::check(qwen_session_set_sampling(handle_, &p));
    }
    void add_stop_string(std::string_view s) {
        detail::check(qwen_session_add_stop_string(handle_, s.data(), s.size()));
    }
    void clear_stop_strings() { detail::check(qwen_session_clear_stop_strings(handle_)); }

    // Streams up to max_tokens tokens (0 = until a stop) to on_piece; returns how many.
    int32_t generate(int32_t max_tokens, const OnPiece &on_piece) {
        Trampoline t{&on_piece, nullptr};
        int32_t n = qwen_session_generate(handle_, max_tokens, &Trampoline::call, &t);
        if (t.error) std::rethrow_exception(t.error);
        return detail::check(n);
    }
    // Generates to the end and returns the whole text.
    std::string generate_text(int32_t max_tokens) {
        std::string out;
        generate(max_tokens, [&](std::string_view piece, int32_t) {
            out.append(piece);
            return true;
        });
        return out;
    }

    // Pull-style: the next token, or nullopt when generation has ended. last_piece() is the
    // text that came with it (or, after nullopt, the text that was held back).
    std::optional<int32_t> next_token() {
        int32_t tok = -1;
        int32_t rc = detail::check(qwen_session_next_token(handle_, &tok));
        if (rc == QWEN_DONE) return std::nullopt;
        return tok;
    }
    std::string last_piece() const {
        return detail::negotiate_text(
            [&](char *buf, size_t cap) { return qwen_session_last_piece(handle_, buf, cap); });
    }
    Finish finish_reason() const {
        return static_cast<Finish>(detail::check(qwen_session_finish_reason(handle_)));
    }

    // Thread-safe: stops a generate()/next_token()/prompt running on another thread.
    void abort() noexcept { qwen_session_abort(handle_); }
    void reset() { detail::check(qwen_session_reset(handle_)); }
    void truncate(size_t n_tokens) { detail::check(qwen_session_truncate(handle_, n_tokens)); }
    int32_t n_ctx() const { return detail::check(qwen_session_n_ctx(handle_)); }

    std::vector<int32_t> tokens() const {
        return detail::negotiate<int32_t>(
            [&](int32_t *b, size_t c) { return qwen_session_tokens(handle_, b, c); }, 256);
    }
    std::vector<float> logits() const {
        return detail::negotiate<float>(
            [&](float *b, size_t c) { return qwen_session_logits(handle_, b, c); }, 0);
    }
    // Evaluates ids and returns the logits after each of them (ids.size() * n_vocab floats).
    std::vector<float> eval_all_logits(const std::vector<int32_t> &ids) {
        int64_t need = detail::check(
            qwen_session_eval_all_logits(handle_, ids.data(), ids.size(), nullptr, 0));
        std::vector<float> out(static_cast<size_t>(need));
        detail::check(
            qwen_session_eval_all_logits(handle_, ids.data(), ids.size(), out.data(), out.size()));
        return out;
    }
    double perplexity(const std::vector<int32_t> &ids) {
        double ppl = 0;
        detail::check(qwen_session_perplexity(handle_, ids.data(), ids.size(), &ppl));
        return ppl;
    }
    std::vector<uint8_t> save_state() const {
        int32_t n = detail::check(qwen_session_save_state(handle_, nullptr, 0));
        std::vector<uint8_t> out(static_cast<size_t>(n));
        detail::check(qwen_session_save_state(handle_, out.data(), out.size()));
        return out;
    }
    void load_state(const std::vector<uint8_t> &state) {
        detail::check(qwen_session_load_state(handle_, state.data(), state.size()));
    }

private:
    struct Trampoline {
        const OnPiece *f;
        std::exception_ptr error;
        static int32_t call(const char *piece, size_t len, int32_t token, void *ud) noexcept {
            auto *t = static_cast<Trampoline *>(ud);
            try {
                return (*t->f)(std::string_view(piece, len), token) ? 0 : 1;
            } catch (...) {
                t->error = std::current_exception();
                return 1;
            }
        }
    };
    qwen_session *handle_;
};

}  // namespace qwen
