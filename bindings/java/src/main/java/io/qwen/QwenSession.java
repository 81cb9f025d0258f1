package io.qwen;

import java.util.OptionalInt;

/**
 * One conversation (KV cache, sampler, chat history) over a {@link QwenModel}. A session serves
 * one call at a time: a concurrent call from another thread throws a {@link QwenException} with
 * status {@link QwenException#BUSY}; only {@link #abort()} may be called from any thread while
 * another call runs.
 */
public final class QwenSession implements AutoCloseable {
    private volatile long handle;

    QwenSession(QwenModel model, int nCtx, int nThreads, int maxBatch) {
        this.handle = QwenNative.sessionNew(model.handle(), nCtx, nThreads, maxBatch);
    }

    private long h() {
        long h = handle;
        if (h == 0) throw new IllegalStateException("the session is closed");
        return h;
    }

    /** The chat system prompt (default "You are a helpful assistant."). */
    public void setSystemPrompt(String text) {
        QwenNative.setSystemPrompt(h(), text);
    }

    /** Adds a user turn and starts the assistant's reply ({@link #generate} or {@link #nextToken}). */
    public void chat(String userText) {
        QwenNative.chat(h(), userText);
    }

    /** Chat in one call: the user turn, then the streamed reply; returns the whole reply. */
    public String chat(String userText, int maxTokens, TokenCallback onToken) {
        chat(userText);
        StringBuilder reply = new StringBuilder();
        generate(maxTokens, (piece, token) -> {
            reply.append(piece);
            return onToken == null || onToken.onToken(piece, token);
        });
        return reply.toString();
    }

    /** Raw completion: appends text to the sequence and starts a generation. */
    public void prompt(String text) {
        QwenNative.prompt(h(), text, false);
    }

    public void prompt(String text, boolean parseSpecial) {
        QwenNative.prompt(h(), text, parseSpecial);
    }

    /** Appends token ids (one batch) and starts a generation. */
    public void eval(int[] ids) {
        QwenNative.eval(h(), ids);
    }

    /** Sampling parameters; temperature 0 is greedy. Reseeds the generator. */
    public void setSampling(float temperature, float topP, int topK, float repetitionPenalty,
                            long seed) {
        QwenNative.setSampling(h(), temperature, topP, topK, repetitionPenalty, seed);
    }

    public void addStopString(String stop) {
        QwenNative.addStopString(h(), stop);
    }

    public void clearStopStrings() {
        QwenNative.clearStopStrings(h());
    }

    /**
     * Streams up to maxTokens tokens (0 = until a stop) to the callback, on this thread. An
     * exception thrown by the callback stops generation and propagates from here.
     *
     * @return the number of tokens generated
     * @throws QwenException with status ABORTED after {@link #abort()}
     */
    public int generate(int maxTokens, TokenCallback callback) {
        return QwenNative.generate(h(), maxTokens, callback);
    }

    /** Generates to the end and returns the text. */
    public String generateText(int maxTokens) {
        StringBuilder out = new StringBuilder();
        generate(maxTokens, (piece, token) -> {
            out.append(piece);
            return true;
        });
        return out.toString();
    }

    /** Pull-style: the next token, or empty when generation has ended; see {@link #lastPiece}. */
    public OptionalInt nextToken() {
        int t = QwenNative.nextToken(h());
        return t < 0 ? OptionalInt.empty() : OptionalInt.of(t);
    }

    /** The text that came with the last {@link #nextToken} (after the end: held-back text). */
    public String lastPiece() {
        return QwenNative.lastPiece(h());
    }

    public FinishReason finishReason() {
        return FinishReason.of(QwenNative.finishReason(h()));
    }

    /** Finished user/assistant exchanges in the chat history. */
    public int historyLength() {
        return QwenNative.historyLength(h());
    }

    public int nCtx() {
        return QwenNative.nCtx(h());
    }

    /** Thread-safe: stops a generate/nextToken/prompt running on another thread. */
    public void abort() {
        long h = handle;
        if (h != 0) QwenNative.abort(h);
    }

    /** Empties the cache and the history. */
    public void reset() {
        QwenNative.reset(h());
    }

    /** The tokens in the cache. */
    public int[] tokens() {
        return QwenNative.tokens(h());
    }

    /** The logits after the last evaluated token (nVocab floats). */
    public float[] logits() {
        return QwenNative.logits(h());
    }

    /** Perplexity of ids (resets the session first). */
    public double perplexity(int[] ids) {
        return QwenNative.perplexity(h(), ids);
    }

    /** Tokens, system prompt and history, to restore later with {@link #loadState}. */
    public byte[] saveState() {
        return QwenNative.saveState(h());
    }

    public void loadState(byte[] state) {
        QwenNative.loadState(h(), state);
    }

    @Override
    public synchronized void close() {
        long h = handle;
        handle = 0;
        if (h != 0) QwenNative.sessionFree(h);
    }
}
