package io.qwen;

/** Why a generation ended. */
public enum FinishReason {
    /** Not ended (or never started). */
    NONE,
    /** A stop token or stop string, or the callback returned false. */
    STOP,
    /** The token limit or the context length was reached. */
    LENGTH,
    /** {@link QwenSession#abort()} was called. */
    ABORTED;

    static FinishReason of(int code) {
        FinishReason[] all = values();
        return code >= 0 && code < all.length ? all[code] : NONE;
    }
}
