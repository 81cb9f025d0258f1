package io.qwen;

/**
 * The native methods (src/ffi/jni.rs in libqwen, built with {@code --features jni}). Handles are
 * the C ABI's, carried as long. The library is loaded from the path in the system property
 * {@code qwen.library} if set, else by name ({@code libqwen.so} on java.library.path, or from the
 * app's jniLibs on Android).
 */
final class QwenNative {
    static {
        String path = System.getProperty("qwen.library");
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("qwen");
        }
    }

    private QwenNative() {}

    static native int abiVersion();

    static native long modelLoad(String path, int nThreads, int nCtx, int kvType);
    static native void modelFree(long model);
    static native int nVocab(long model);
    static native String arch(long model);
    static native int[] tokenize(long model, String text, boolean parseSpecial);
    static native String detokenize(long model, int[] ids, boolean skipSpecial);
    static native int specialToken(long model, String name);

    static native long sessionNew(long model, int nCtx, int nThreads, int maxBatch);
    static native void sessionFree(long session);
    static native void setSystemPrompt(long session, String text);
    static native void chat(long session, String text);
    static native void prompt(long session, String text, boolean parseSpecial);
    static native void eval(long session, int[] ids);
    static native void setSampling(long session, float temperature, float topP, int topK,
                                   float repetitionPenalty, long seed);
    static native void addStopString(long session, String stop);
    static native void clearStopStrings(long session);
    static native int generate(long session, int maxTokens, TokenCallback callback);
    static native int nextToken(long session);
    static native String lastPiece(long session);
    static native int finishReason(long session);
    static native int historyLength(long session);
    static native int nCtx(long session);
    static native void abort(long session);
    static native void reset(long session);
    static native int[] tokens(long session);
    static native float[] logits(long session);
    static native double perplexity(long session, int[] ids);
    static native byte[] saveState(long session);
    static native void loadState(long session, byte[] state);
}
