package io.qwen;

/** A failed libqwen call: {@link #status()} is the C status code (QWEN_ERR_*), the message the
 * library's own ({@code qwen_last_error()}). */
public class QwenException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public static final int INVALID_ARGUMENT = -1;
    public static final int INVALID_HANDLE = -2;
    public static final int IO = -3;
    public static final int FORMAT = -4;
    public static final int UNSUPPORTED = -5;
    public static final int TOKENIZER = -6;
    public static final int CONTEXT_FULL = -7;
    public static final int ABORTED = -8;
    public static final int BUSY = -9;
    public static final int INTERNAL = -10;

    private final int status;

    public QwenException(int status, String message) {
        super(message);
        this.status = status;
    }

    /** The QWEN_ERR_* status code of the C API (one of the constants of this class). */
    public int status() {
        return status;
    }
}
