package io.qwen;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;
import static org.junit.Assume.assumeTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.OptionalInt;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.Test;

/**
 * The Java API on the host JVM against the host libqwen.so. Models come from system properties:
 * qwen.tiny.model (the synthetic model tests/ffi_java.rs writes) and qwen.real.model (the real
 * Qwen2.5-Coder 0.5B GGUF); tests of a missing model are skipped (JUnit assumptions).
 */
public class QwenTest {
    private static String model(String property) {
        String p = System.getProperty(property);
        assumeTrue(property + " not set", p != null && !p.isEmpty());
        return p;
    }

    private static QwenModel tiny() {
        return QwenModel.load(model("qwen.tiny.model"), 1, 0);
    }

    @Test
    public void abiVersionMajorIsTwo() {
        assertEquals(2, QwenModel.abiVersion() >> 16);
    }

    @Test
    public void missingFileThrowsWithTheLibraryMessage() {
        try {
            QwenModel.load("/nonexistent/model.gguf");
            fail("expected an exception");
        } catch (QwenException e) {
            assertEquals(QwenException.IO, e.status());
            assertTrue(e.getMessage(), e.getMessage().contains("/nonexistent/model.gguf"));
        }
    }

    @Test
    public void tokenizeRoundTripAndControlTokens() {
        try (QwenModel m = tiny()) {
            assertEquals("qwen2", m.arch());
            assertEquals(276, m.nVocab());
            int[] ids = m.tokenize("hello world");
            assertTrue(ids.length > 0);
            assertEquals("hello world", m.detokenize(ids));
            int imEnd = m.specialToken("<|im_end|>");
            assertArrayEquals(new int[] {imEnd}, m.tokenize("<|im_end|>", true));
            assertTrue(m.tokenize("<|im_end|>").length > 1); // typed text stays text
            assertEquals("", m.detokenize(new int[] {imEnd}, true));
            try {
                m.detokenize(new int[] {100000});
                fail("expected an exception");
            } catch (QwenException e) {
                assertEquals(QwenException.INVALID_ARGUMENT, e.status());
            }
        }
    }

    @Test
    public void streamsAChatReply() {
        try (QwenModel m = tiny(); QwenSession s = m.newSession(128, 1)) {
            List<Integer> tokens = new ArrayList<>();
            String reply = s.chat("hello", 8, (piece, token) -> {
                if (token >= 0) tokens.add(token);
                return true;
            });
            assertEquals(8, tokens.size());
            assertFalse(reply.isEmpty());
            assertEquals(FinishReason.LENGTH, s.finishReason());
            assertEquals(1, s.historyLength());
            assertEquals(128, s.nCtx());
        }
    }

    @Test
    public void callbackStopsAndItsExceptionPropagates() {
        try (QwenModel m = tiny(); QwenSession s = m.newSession(128, 1)) {
            s.prompt("hello world");
            int[] seen = {0};
            assertEquals(2, s.generate(0, (p, t) -> ++seen[0] < 2));
            assertEquals(FinishReason.STOP, s.finishReason());

            RuntimeException boom = new RuntimeException("boom");
            s.prompt(" again");
            try {
                s.generate(0, (p, t) -> {
                    throw boom;
                });
                fail("expected the callback's exception");
            } catch (RuntimeException e) {
                assertSame(boom, e);
            }
            // The session is still usable.
            s.prompt(" more");
            assertEquals(3, s.generate(3, null));
        }
    }

    @Test
    public void pullStyleMatchesStreaming() {
        try (QwenModel m = tiny(); QwenSession s = m.newSession(128, 1)) {
            s.prompt("hello world");
            List<Integer> streamed = new ArrayList<>();
            s.generate(6, (p, t) -> {
                if (t >= 0) streamed.add(t);
                return true;
            });
            s.reset();
            s.prompt("hello world");
            List<Integer> pulled = new ArrayList<>();
            StringBuilder text = new StringBuilder();
            for (int i = 0; i < 6; i++) {
                OptionalInt t = s.nextToken();
                assertTrue(t.isPresent());
                pulled.add(t.getAsInt());
                text.append(s.lastPiece());
            }
            assertEquals(streamed, pulled);
            assertFalse(text.toString().isEmpty());
        }
    }

    @Test
    public void abortAndBusyFromAnotherThread() throws Exception {
        try (QwenModel m = tiny(); QwenSession s = m.newSession(256, 1)) {
            s.prompt("hello");
            CountDownLatch started = new CountDownLatch(1);
            CountDownLatch release = new CountDownLatch(1);
            AtomicReference<Throwable> thrown = new AtomicReference<>();
            Thread t = new Thread(() -> {
                try {
                    s.generate(0, (p, tok) -> {
                        started.countDown();
                        try {
                            release.await();
                        } catch (InterruptedException e) {
                            return false;
                        }
                        return true;
                    });
                } catch (Throwable e) {
                    thrown.set(e);
                }
            });
            t.start();
            started.await();
            try {
                s.reset();
                fail("expected BUSY");
            } catch (QwenException e) {
                assertEquals(QwenException.BUSY, e.status());
            }
            s.abort();
            release.countDown();
            t.join();
            assertTrue(thrown.get() instanceof QwenException);
            assertEquals(QwenException.ABORTED, ((QwenException) thrown.get()).status());
            assertEquals(FinishReason.ABORTED, s.finishReason());
        }
    }

    @Test
    public void stateRoundTripAndPerplexity() {
        try (QwenModel m = tiny();
             QwenSession a = m.newSession(256, 1);
             QwenSession b = m.newSession(256, 1)) {
            a.chat("hello");
            byte[] state = a.saveState();
            String fromA = a.generateText(5);
            b.loadState(state);
            assertEquals(fromA, b.generateText(5));
            double ppl = a.perplexity(m.tokenize("hello world, the world is"));
            assertTrue(ppl > 1.0 && !Double.isNaN(ppl));
            assertEquals(m.nVocab(), a.logits().length);
            try {
                b.loadState(new byte[] {1, 2, 3});
                fail("expected FORMAT");
            } catch (QwenException e) {
                assertEquals(QwenException.FORMAT, e.status());
            }
        }
    }

    @Test
    public void closedHandlesAreRejected() {
        QwenModel m = tiny();
        QwenSession s = m.newSession(64, 1);
        m.close();
        m.close(); // idempotent
        s.prompt("hello"); // the session keeps the model alive
        assertEquals(2, s.generate(2, null));
        s.close();
        try {
            s.prompt("x");
            fail("expected IllegalStateException");
        } catch (IllegalStateException expected) {
        }
    }

    @Test
    public void convertedTinyModelStreamsAChatReply() {
        // qwen2-tiny from the test data, converted by qwen-convert: the real Qwen vocabulary and
        // ChatML tokens over random weights.
        String path = model("qwen.converted.model");
        try (QwenModel m = QwenModel.load(path, 1, 256); QwenSession s = m.newSession()) {
            int[] n = {0};
            String reply = s.chat("Hello, who are you?", 8, (piece, token) -> {
                if (token >= 0) n[0]++;
                return true;
            });
            assertTrue(n[0] > 0 || s.finishReason() == FinishReason.STOP);
            assertEquals(1, s.historyLength());
            System.out.println("converted tiny model replied " + n[0] + " tokens: " + reply);
        }
    }

    @Test
    public void reducedMemoryKvCachesAnswerToo() {
        String path = model("qwen.converted.model");
        for (KvCache kv : new KvCache[] {KvCache.F16, KvCache.Q8}) {
            try (QwenModel m = QwenModel.load(path, 1, 256, kv); QwenSession s = m.newSession()) {
                int[] n = {0};
                s.chat("Hello", 4, (piece, token) -> {
                    if (token >= 0) n[0]++;
                    return true;
                });
                assertTrue(kv + " generated nothing", n[0] > 0 || s.finishReason() == FinishReason.STOP);
            }
        }
    }

    @Test
    public void realModelStreamsAChatReply() {
        String path = model("qwen.real.model");
        try (QwenModel m = QwenModel.load(path, 2, 512); QwenSession s = m.newSession()) {
            StringBuilder streamed = new StringBuilder();
            String reply = s.chat("What is 2+2? Answer with one number.", 16, (piece, token) -> {
                streamed.append(piece);
                return true;
            });
            assertEquals(reply, streamed.toString());
            assertTrue(reply, reply.contains("4"));
            assertEquals(FinishReason.STOP, s.finishReason());
            System.out.println("real model replied: " + reply);
        }
    }
}
