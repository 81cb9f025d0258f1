// A streaming chat in C++ with bindings/cpp/qwen.hpp, linked statically against libqwen.a.
//
//   g++ -std=c++17 -I include -I bindings/cpp examples/cpp/chat.cpp
//       target/release/libqwen.a -lpthread -ldl -lm -o chat     (one line)
//   ./chat -m model.gguf -p "Explain RAII in one sentence"   # one turn
//   ./chat -m model.gguf                                      # one turn per stdin line
//
// Options: -n max tokens per reply (default 256), -s system prompt, -t threads, -c context,
// --pull (pull tokens with next_token() instead of a callback).
#include "qwen.hpp"

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

namespace {

const char *finish_name(qwen::Finish f) {
    switch (f) {
        case qwen::Finish::Stop: return "stop";
        case qwen::Finish::Length: return "length";
        case qwen::Finish::Aborted: return "aborted";
        default: return "none";
    }
}

void turn(qwen::Session &session, const std::string &text, int max_tokens, bool pull) {
    session.chat(text);
    int n = 0;
    if (pull) {
        // Pull-style: the caller decides when to stop asking.
        while (n < max_tokens) {
            auto tok = session.next_token();
            std::cout << session.last_piece() << std::flush;
            if (!tok) break;
            n++;
        }
    } else {
        n = session.generate(max_tokens, [](std::string_view piece, int32_t) {
            std::cout << piece << std::flush;
            return true;  // false would stop the reply
        });
    }
    std::cout << "\n";
    // A pull loop that stops at its own limit leaves the generation open (finish "none").
    const char *why = pull && n == max_tokens ? "limit" : finish_name(session.finish_reason());
    std::cerr << "[" << n << " tokens, finish: " << why << "]\n";
}

}  // namespace

int main(int argc, char **argv) {
    std::string model_path, prompt, system;
    int max_tokens = 256;
    bool pull = false;
    qwen_session_params sp = qwen::default_session_params();
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--pull") {
            pull = true;
            continue;
        }
        if (i + 1 >= argc) {
            std::cerr << "usage: " << argv[0]
                      << " -m MODEL [-p PROMPT] [-n N] [-s SYSTEM] [-t THREADS] [-c CTX] [--pull]\n";
            return 2;
        }
        std::string v = argv[++i];
        if (a == "-m") model_path = v;
        else if (a == "-p") prompt = v;
        else if (a == "-s") system = v;
        else if (a == "-n") max_tokens = std::atoi(v.c_str());
        else if (a == "-t") sp.n_threads = std::atoi(v.c_str());
        else if (a == "-c") sp.n_ctx = std::atoi(v.c_str());
        else {
            std::cerr << "unknown option " << a << "\n";
            return 2;
        }
    }
    if (model_path.empty()) {
        std::cerr << "usage: " << argv[0] << " -m MODEL [-p PROMPT] ...\n";
        return 2;
    }
    try {
        qwen::Model model(model_path);
        auto info = model.info();
        std::cerr << "libqwen " << qwen_version_string() << ": " << info.arch << ", "
                  << info.n_layer << " layers, vocabulary " << info.n_vocab << "\n";
        qwen::Session session(model, sp);
        if (!system.empty()) session.set_system_prompt(system);
        if (!prompt.empty()) {
            turn(session, prompt, max_tokens, pull);
        } else {
            std::string line;
            while (std::getline(std::cin, line)) {
                if (!line.empty() && line.back() == '\r') line.pop_back();
                if (!line.empty()) turn(session, line, max_tokens, pull);
            }
        }
    } catch (const qwen::Error &e) {
        std::cerr << "error: " << e.what() << " (status " << e.status() << ")\n";
        return 1;
    }
    return 0;
}
