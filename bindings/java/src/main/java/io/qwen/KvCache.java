package io.qwen;

/** KV-cache storage of a model's sessions (the C ABI's QWEN_KV_* constants). */
public enum KvCache {
    /** 32-bit floats: exact. */
    F32(0),
    /** 16-bit floats: half the memory of F32. */
    F16(1),
    /** int8 rows with a scale: about a quarter of F32. */
    Q8(2);

    final int id;

    KvCache(int id) {
        this.id = id;
    }
}
