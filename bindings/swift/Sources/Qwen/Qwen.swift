// A 1:1 Swift mirror of the C API in include/qwen.h: QwenModel and QwenSession own their C
// handles (freed in deinit), failures throw QwenError with the library's status and message,
// and replies stream as AsyncThrowingStream<String, Error> whose cancellation aborts the native
// generation.
//
// Threading is the C API's: a QwenModel may be shared by threads; a QwenSession serves one call
// at a time (a concurrent call throws QwenError(.busy)); abort() may be called from any thread.

import CQwen
import Foundation

/// A failed libqwen call.
public struct QwenError: Error, CustomStringConvertible, Sendable {
    /// The C status code (QWEN_ERR_*).
    public let status: Int32
    /// The library's message (`qwen_last_error()`).
    public let message: String

    public static let invalidArgument: Int32 = QWEN_ERR_INVALID_ARGUMENT
    public static let invalidHandle: Int32 = QWEN_ERR_INVALID_HANDLE
    public static let io: Int32 = QWEN_ERR_IO
    public static let format: Int32 = QWEN_ERR_FORMAT
    public static let unsupported: Int32 = QWEN_ERR_UNSUPPORTED
    public static let tokenizer: Int32 = QWEN_ERR_TOKENIZER
    public static let contextFull: Int32 = QWEN_ERR_CONTEXT_FULL
    public static let aborted: Int32 = QWEN_ERR_ABORTED
    public static let busy: Int32 = QWEN_ERR_BUSY
    public static let `internal`: Int32 = QWEN_ERR_INTERNAL

    public var description: String {
        "\(String(cString: qwen_status_name(status))): \(message)"
    }

    /// The error of the last failed call on this thread.
    static func last(_ status: Int32? = nil) -> QwenError {
        QwenError(status: status ?? qwen_last_status(), message: String(cString: qwen_last_error()))
    }
}

@discardableResult
private func check(_ rc: Int32) throws -> Int32 {
    if rc < 0 { throw QwenError.last(rc) }
    return rc
}

/// Calls a size-negotiating text function until the text fits.
private func negotiateText(_ fill: (UnsafeMutablePointer<CChar>?, Int) -> Int32) throws -> String {
    var cap = 256
    while true {
        var buf = [CChar](repeating: 0, count: cap)
        let n = Int(try check(buf.withUnsafeMutableBufferPointer { fill($0.baseAddress, $0.count) }))
        if n < cap {
            let bytes = buf[0..<n].map { UInt8(bitPattern: $0) }
            return String(decoding: bytes, as: UTF8.self)
        }
        cap = n + 1
    }
}

/// Why a generation ended (`qwen_session_finish_reason`).
public enum FinishReason: Int32, Sendable {
    case none = 0, stop = 1, length = 2, aborted = 3
}

/// The ABI version of the loaded library, (major << 16) | (minor << 8) | patch.
public var qwenABIVersion: UInt32 { qwen_abi_version() }

/// A loaded GGUF model. Thread-safe.
public final class QwenModel: @unchecked Sendable {
    let handle: OpaquePointer

    /// - Parameters: threads / contextLength: session defaults (0 = the library's).
    public init(path: String, threads: Int32 = 0, contextLength: Int32 = 0) throws {
        var params = qwen_model_default_params()
        params.n_threads = threads
        params.n_ctx = contextLength
        guard let h = qwen_model_load(path, &params) else { throw QwenError.last() }
        handle = h
    }

    deinit { qwen_model_free(handle) }

    public var info: qwen_model_info {
        get throws {
            var i = qwen_model_info()
            try check(qwen_model_get_info(handle, &i))
            return i
        }
    }

    public var vocabularySize: Int32 { get throws { try check(qwen_model_n_vocab(handle)) } }

    /// Token ids; `parseSpecial` only for the app's own text (user text stays plain).
    public func tokenize(_ text: String, parseSpecial: Bool = false) throws -> [Int32] {
        var utf8 = Array(text.utf8)
        return try utf8.withUnsafeMutableBufferPointer { t -> [Int32] in
            let base = UnsafeRawPointer(t.baseAddress)?.assumingMemoryBound(to: CChar.self)
            let n = Int(try check(qwen_tokenize(handle, base, t.count, parseSpecial, nil, 0)))
            var ids = [Int32](repeating: 0, count: n)
            try ids.withUnsafeMutableBufferPointer { out in
                try check(qwen_tokenize(handle, base, t.count, parseSpecial, out.baseAddress, out.count))
            }
            return ids
        }
    }

    public func detokenize(_ ids: [Int32], skipSpecial: Bool = false) throws -> String {
        try ids.withUnsafeBufferPointer { p in
            try negotiateText { qwen_detokenize(handle, p.baseAddress, p.count, skipSpecial, $0, $1) }
        }
    }

    public func specialToken(_ name: String) throws -> Int32 {
        try check(qwen_token_special_id(handle, name, name.utf8.count))
    }
}

/// One conversation over a model. One call at a time; `abort()` from anywhere.
public final class QwenSession: @unchecked Sendable {
    let handle: OpaquePointer
    /// Keeps the model object alive (the C side does too; this keeps Swift's view consistent).
    public let model: QwenModel

    public init(model: QwenModel, contextLength: Int32 = 0, threads: Int32 = 0) throws {
        var params = qwen_session_default_params()
        params.n_ctx = contextLength
        params.n_threads = threads
        guard let h = qwen_session_new(model.handle, &params) else { throw QwenError.last() }
        handle = h
        self.model = model
    }

    deinit { qwen_session_free(handle) }

    public func setSystemPrompt(_ text: String) throws {
        try check(qwen_session_set_system_prompt(handle, text, text.utf8.count))
    }

    /// Adds a user turn; then `generate`, `nextToken` or use `reply(to:)`.
    public func chat(_ text: String) throws {
        try check(qwen_session_chat(handle, text, text.utf8.count))
    }

    /// Raw completion: appends text and starts a generation.
    public func prompt(_ text: String, parseSpecial: Bool = false) throws {
        try check(qwen_session_prompt(handle, text, text.utf8.count, parseSpecial))
    }

    public func eval(_ ids: [Int32]) throws {
        try ids.withUnsafeBufferPointer { try check(qwen_session_eval(handle, $0.baseAddress, $0.count)) }
    }

    public func setSampling(_ params: qwen_sampling_params) throws {
        var p = params
        try check(qwen_session_set_sampling(handle, &p))
    }

    public func addStopString(_ s: String) throws {
        try check(qwen_session_add_stop_string(handle, s, s.utf8.count))
    }

    /// Pull-style: the next token, or nil when generation has ended (see `lastPiece`).
    public func nextToken() throws -> Int32? {
        var tok: Int32 = -1
        let rc = try check(qwen_session_next_token(handle, &tok))
        return rc == QWEN_DONE ? nil : tok
    }

    /// The text that came with the last `nextToken()` (after the end: held-back text).
    public func lastPiece() throws -> String {
        try negotiateText { qwen_session_last_piece(handle, $0, $1) }
    }

    /// Generates up to `maxTokens` (0 = until a stop), calling `onPiece` on this thread;
    /// return false from it to stop. Returns the number of tokens.
    @discardableResult
    public func generate(maxTokens: Int32, onPiece: (String, Int32) -> Bool) throws -> Int32 {
        typealias Body = (String, Int32) -> Bool
        return try withoutActuallyEscaping(onPiece) { body -> Int32 in
            var box: Body = body
            return try withUnsafeMutablePointer(to: &box) { ptr -> Int32 in
                try check(qwen_session_generate(handle, maxTokens, { piece, len, token, ud in
                    let f = ud!.assumingMemoryBound(to: Body.self).pointee
                    let bytes = UnsafeRawBufferPointer(start: piece, count: len)
                    return f(String(decoding: bytes, as: UTF8.self), token) ? 0 : 1
                }, ptr))
            }
        }
    }

    public var finishReason: FinishReason {
        get throws { FinishReason(rawValue: try check(qwen_session_finish_reason(handle))) ?? .none }
    }

    public var historyLength: Int32 { get throws { try check(qwen_session_history_len(handle)) } }

    /// Thread-safe: stops a generation running on another thread.
    public func abort() { qwen_session_abort(handle) }

    public func reset() throws { try check(qwen_session_reset(handle)) }

    public func logits() throws -> [Float] {
        let n = Int(try check(qwen_session_logits(handle, nil, 0)))
        var out = [Float](repeating: 0, count: n)
        try out.withUnsafeMutableBufferPointer { try check(qwen_session_logits(handle, $0.baseAddress, $0.count)) }
        return out
    }

    public func perplexity(_ ids: [Int32]) throws -> Double {
        var ppl = 0.0
        try ids.withUnsafeBufferPointer { try check(qwen_session_perplexity(handle, $0.baseAddress, $0.count, &ppl)) }
        return ppl
    }

    public func saveState() throws -> [UInt8] {
        let n = Int(try check(qwen_session_save_state(handle, nil, 0)))
        var out = [UInt8](repeating: 0, count: n)
        try out.withUnsafeMutableBufferPointer { try check(qwen_session_save_state(handle, $0.baseAddress, $0.count)) }
        return out
    }

    public func loadState(_ state: [UInt8]) throws {
        try state.withUnsafeBufferPointer { try check(qwen_session_load_state(handle, $0.baseAddress, $0.count)) }
    }

    /// Adds a user turn and streams the reply. The generation runs on its own thread (pulling
    /// tokens); cancelling the consuming task aborts it.
    public func reply(to userText: String, maxTokens: Int = 512) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            let thread = Thread { [self] in
                do {
                    try chat(userText)
                    var n = 0
                    while n < maxTokens {
                        let tok = try nextToken()
                        let piece = try lastPiece()
                        if !piece.isEmpty { continuation.yield(piece) }
                        if tok == nil { break }
                        n += 1
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { [self] termination in
                if case .cancelled = termination { abort() }
            }
            thread.start()
        }
    }
}
