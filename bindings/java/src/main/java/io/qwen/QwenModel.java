package io.qwen;

/**
 * A loaded GGUF model. Thread-safe: one model serves any number of threads and sessions. Close it
 * when done (sessions created from it keep working; the file is unmapped when the last one is
 * closed too).
 */
public final class QwenModel implements AutoCloseable {
    private volatile long handle;

    private QwenModel(long handle) {
        this.handle = handle;
    }

    /** The C ABI version of the loaded library, (major << 16) | (minor << 8) | patch. */
    public static int abiVersion() {
        return QwenNative.abiVersion();
    }

    /** Loads a model with threads and context chosen per session (0 = the library's defaults). */
    public static QwenModel load(String path) {
        return load(path, 0, 0);
    }

    /**
     * @param nThreads default worker threads for sessions (0 = physical cores)
     * @param nCtx default context length for sessions (0 = the model's, at most 4096)
     * @throws QwenException with the library's message (the file, key or tensor concerned)
     */
    public static QwenModel load(String path, int nThreads, int nCtx) {
        return load(path, nThreads, nCtx, KvCache.F32);
    }

    /**
     * @param kvCache how this model's sessions store keys and values: {@link KvCache#F16} halves
     *     the cache's memory, {@link KvCache#Q8} (int8) takes about a quarter (phones: longer
     *     contexts in the same RAM)
     * @throws QwenException with the library's message
     */
    public static QwenModel load(String path, int nThreads, int nCtx, KvCache kvCache) {
        return new QwenModel(QwenNative.modelLoad(path, nThreads, nCtx, kvCache.id));
    }

    long handle() {
        long h = handle;
        if (h == 0) throw new IllegalStateException("the model is closed");
        return h;
    }

    /** Logits per position (embedding rows). */
    public int nVocab() {
        return QwenNative.nVocab(handle());
    }

    /** "qwen" or "qwen2". */
    public String arch() {
        return QwenNative.arch(handle());
    }

    /** Token ids of text typed by a user: control-token spellings stay plain text. */
    public int[] tokenize(String text) {
        return tokenize(text, false);
    }

    /** With parseSpecial, "<|im_end|>" becomes the control token: only for the app's own text. */
    public int[] tokenize(String text, boolean parseSpecial) {
        return QwenNative.tokenize(handle(), text, parseSpecial);
    }

    public String detokenize(int[] ids) {
        return detokenize(ids, false);
    }

    public String detokenize(int[] ids, boolean skipSpecial) {
        return QwenNative.detokenize(handle(), ids, skipSpecial);
    }

    /** The id of a control token such as "<|im_end|>". */
    public int specialToken(String name) {
        return QwenNative.specialToken(handle(), name);
    }

    /** A new session with the model's defaults. */
    public QwenSession newSession() {
        return new QwenSession(this, 0, 0, 0);
    }

    /** A new session; 0 for any argument means the default. */
    public QwenSession newSession(int nCtx, int nThreads) {
        return new QwenSession(this, nCtx, nThreads, 0);
    }

    @Override
    public synchronized void close() {
        long h = handle;
        handle = 0;
        if (h != 0) QwenNative.modelFree(h);
    }
}
