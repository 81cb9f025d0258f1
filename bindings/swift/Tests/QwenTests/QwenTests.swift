import XCTest
@testable import Qwen

/// Models from the environment: QWEN_TINY_MODEL (tests/ffi_common writes one) and
/// QWEN_REAL_MODEL (the Qwen2.5-Coder 0.5B GGUF). Missing ones skip.
final class QwenTests: XCTestCase {
    private func modelPath(_ name: String) throws -> String {
        guard let p = ProcessInfo.processInfo.environment[name], !p.isEmpty else {
            throw XCTSkip("\(name) not set")
        }
        return p
    }

    func testABIVersion() {
        XCTAssertEqual(qwenABIVersion >> 16, 2)
    }

    func testMissingFileThrows() {
        XCTAssertThrowsError(try QwenModel(path: "/nonexistent.gguf")) { error in
            XCTAssertEqual((error as? QwenError)?.status, QwenError.io)
        }
    }

    func testTokenizeRoundTrip() throws {
        let model = try QwenModel(path: try modelPath("QWEN_TINY_MODEL"), threads: 1)
        let ids = try model.tokenize("hello world")
        XCTAssertEqual(try model.detokenize(ids), "hello world")
    }

    func testStreamingReply() async throws {
        let model = try QwenModel(path: try modelPath("QWEN_REAL_MODEL"), threads: 2)
        let session = try QwenSession(model: model, contextLength: 512)
        var text = ""
        for try await piece in session.reply(to: "What is 2+2? Answer with one number.", maxTokens: 16) {
            text += piece
        }
        XCTAssertTrue(text.contains("4"), text)
        XCTAssertEqual(try session.finishReason, .stop)
    }
}
