package io.qwen.android

import io.qwen.KvCache
import io.qwen.QwenModel
import io.qwen.QwenSession
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.withContext

/**
 * Kotlin-friendly entry points over the Java API (io.qwen). Loading and generation block, so
 * they run on Dispatchers.IO; a reply is a cold Flow of text pieces whose cancellation aborts
 * the native generation (qwen_session_abort).
 */
object Qwen {
    /**
     * Loads a GGUF model off the main thread. Close it with `use {}` or `close()`. `kvCache`
     * [KvCache.Q8] stores the sessions' keys and values in about a quarter of the memory.
     */
    suspend fun load(
        path: String,
        threads: Int = 0,
        contextLength: Int = 0,
        kvCache: KvCache = KvCache.F32,
    ): QwenModel = withContext(Dispatchers.IO) { QwenModel.load(path, threads, contextLength, kvCache) }
}

/**
 * Adds a user turn and streams the assistant's reply. Collect it once; cancelling the collector
 * stops the generation. Failures arrive as [io.qwen.QwenException].
 */
fun QwenSession.chatFlow(userText: String, maxTokens: Int = 512): Flow<String> = callbackFlow {
    val session = this@chatFlow
    val worker = Thread {
        try {
            session.chat(userText)
            session.generate(maxTokens) { piece, _ ->
                piece.isEmpty() || trySendBlocking(piece).isSuccess
            }
            close()
        } catch (e: Throwable) {
            close(e)
        }
    }
    worker.start()
    awaitClose {
        session.abort()
        worker.join()
    }
}.flowOn(Dispatchers.IO)

/** The whole reply as one string (suspends until generation ends). */
suspend fun QwenSession.reply(userText: String, maxTokens: Int = 512): String =
    withContext(Dispatchers.IO) { chat(userText, maxTokens, null) }
