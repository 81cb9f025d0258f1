package io.qwen;

/** Receives generated text as it becomes certain. */
@FunctionalInterface
public interface TokenCallback {
    /**
     * @param piece the text that came with this token (may be empty: bytes of an unfinished
     *     character or a possible stop-string beginning are held back)
     * @param token the token id, or -1 for the final piece of held-back text
     * @return true to go on, false to stop generating
     */
    boolean onToken(String piece, int token);
}
