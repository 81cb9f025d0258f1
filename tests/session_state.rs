//! Session state save/restore on the tiny models: a restored session continues exactly as the
//! original (greedy ids and logits bit for bit, seeded sampling too), for every KV cache type,
//! Qwen-1 with its NTK alpha frozen past seq_length, and multi-sequence sessions; every
//! corruption, truncation, foreign model or mismatched session is a clear error that leaves the
//! session unchanged; and the CLI's --save-session / --load-session continue one run exactly.

mod common;

use qwen::kv_cache::KvCacheType;
use qwen::model::{Model, RopeScaling, Yarn};
use qwen::sampler::{argmax, Sampler, SamplingParams};
use qwen::session::{Session, SessionOptions, SessionParams, SessionState};
use qwen::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

fn model(name: &str) -> Option<Arc<Model>> {
    let path = common::tiny_gguf(name, "f32")?;
    Some(Arc::new(Model::load(path).unwrap()))
}

fn session(m: &Arc<Model>, ty: KvCacheType, n_seq: usize, n_ctx: usize) -> Session {
    let params = SessionParams {
        n_ctx,
        n_threads: 2,
        max_batch: 32,
    };
    let opts = SessionOptions {
        kv_cache: ty,
        n_seq,
        ..Default::default()
    };
    Session::with_options(Arc::clone(m), &params, &opts).unwrap()
}

fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7919 + salt * 104_729) % 150_000 + 10)
        .collect()
}

/// `m` greedy steps after what is in the cache: the ids and the logits each was picked from.
fn greedy(s: &mut Session, m: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let (mut ids, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..m {
        let row = s.logits().to_vec();
        let t = argmax(&row);
        ids.push(t);
        rows.push(row);
        s.eval(&[t]).unwrap();
    }
    (ids, rows)
}

const TYPES: [KvCacheType; 3] = [KvCacheType::F32, KvCacheType::F16, KvCacheType::Q8];

#[test]
fn restored_sessions_continue_bit_identically() {
    // Qwen-1's prompt is longer than its seq_length of 64, so its NTK alpha is above 1 and
    // must come back with the state.
    for (name, prompt_len) in [("qwen1-tiny", 80), ("qwen2-tiny", 30)] {
        let Some(m) = model(name) else { return };
        for ty in TYPES {
            let mut a = session(&m, ty, 1, 160);
            a.eval(&prompt(prompt_len, 1)).unwrap();
            greedy(&mut a, 5);
            let alpha = a.ntk_alpha();
            if name == "qwen1-tiny" {
                assert!(alpha > 1.0, "{name}: NTK alpha {alpha}");
            }
            let mut bytes = Vec::new();
            let n = a.save_state(&mut bytes).unwrap();
            assert_eq!(n as usize, bytes.len());
            let saved_logits = a.logits().to_vec();
            let (want_ids, want_rows) = greedy(&mut a, 8);

            let mut b = session(&m, ty, 1, 160);
            let t = Instant::now();
            let st = b.load_state(bytes.as_slice()).unwrap();
            let load_ms = t.elapsed().as_secs_f64() * 1e3;
            assert_eq!(st.n_bytes() as usize, bytes.len());
            assert_eq!(b.tokens().len(), prompt_len + 5);
            assert_eq!(b.ntk_alpha(), alpha);
            assert!(b.logits() == saved_logits.as_slice());
            let (ids, rows) = greedy(&mut b, 8);
            assert_eq!(ids, want_ids, "{name} {ty:?}");
            for (i, (x, y)) in rows.iter().zip(&want_rows).enumerate() {
                assert!(x == y, "{name} {ty:?}: logits of step {i} differ");
            }
            eprintln!(
                "{name} {}: {} tokens, state {} bytes, load {load_ms:.2} ms",
                ty.as_str(),
                prompt_len + 5,
                bytes.len()
            );
        }
    }
}

#[test]
fn a_seeded_sampler_continues_its_stream() {
    let Some(m) = model("qwen2-tiny") else { return };
    let params = SamplingParams {
        temperature: 1.2,
        top_p: 0.95,
        top_k: 50,
        repetition_penalty: 1.1,
        seed: 42,
    };
    let mut a = session(&m, KvCacheType::F16, 1, 96);
    a.eval(&prompt(12, 2)).unwrap();
    let mut sampler = Sampler::new(params.clone());
    let (first, _) = a.generate(&mut sampler, 6, &[], |_| true).unwrap();
    a.eval(&first[5..]).unwrap(); // the last sampled token, which generate leaves unevaluated
    let mut bytes = Vec::new();
    a.save_state_with(&mut bytes, Some(&sampler), b"app")
        .unwrap();
    let (want, _) = a.generate(&mut sampler, 10, &[], |_| true).unwrap();

    let mut b = session(&m, KvCacheType::F16, 1, 96);
    let st = b.load_state(bytes.as_slice()).unwrap();
    assert_eq!(st.user_data(), b"app");
    assert_eq!(st.sampling_params(), Some(&params));
    let mut restored = st.sampler().unwrap();
    let (got, _) = b.generate(&mut restored, 10, &[], |_| true).unwrap();
    assert_eq!(got, want);
    // A fresh sampler with the same seed restarts the stream instead (the test can fail).
    let mut c = session(&m, KvCacheType::F16, 1, 96);
    c.load_state(bytes.as_slice()).unwrap();
    let (fresh, _) = c
        .generate(&mut Sampler::new(params), 10, &[], |_| true)
        .unwrap();
    assert_ne!(fresh, want, "the saved random state made no difference");
}

#[test]
fn multi_sequence_sessions_round_trip() {
    let Some(m) = model("qwen2-tiny") else { return };
    for ty in TYPES {
        let mut a = session(&m, ty, 3, 64);
        a.eval_seq(0, &prompt(9, 3)).unwrap();
        a.eval_seq(2, &prompt(17, 4)).unwrap(); // sequence 1 stays empty
        let step = |s: &mut Session, toks: &mut Vec<u32>| -> Vec<f32> {
            let out = s.decode_batch(&[0, 2], toks).unwrap().to_vec();
            let v = out.len() / 2;
            *toks = vec![argmax(&out[..v]), argmax(&out[v..])];
            out
        };
        let mut toks = vec![5, 6];
        for _ in 0..3 {
            step(&mut a, &mut toks);
        }
        let mut bytes = Vec::new();
        a.save_state(&mut bytes).unwrap();
        let mut want = Vec::new();
        let mut want_toks = toks.clone();
        for _ in 0..4 {
            want.push(step(&mut a, &mut want_toks));
        }
        // Into a session of 3 and of 4 sequences (the extra one is cleared).
        for n_seq in [3, 4] {
            let mut b = session(&m, ty, n_seq, 64);
            if n_seq == 4 {
                b.eval_seq(3, &prompt(5, 9)).unwrap();
            }
            b.load_state(bytes.as_slice()).unwrap();
            assert_eq!(b.seq_tokens(0).len(), 12);
            assert!(b.seq_tokens(1).is_empty());
            assert_eq!(b.seq_tokens(2).len(), 20);
            if n_seq == 4 {
                assert!(b.seq_tokens(3).is_empty());
            }
            let mut t = toks.clone();
            for w in &want {
                assert!(&step(&mut b, &mut t) == w, "{ty:?} n_seq {n_seq}");
            }
        }
        let mut small = session(&m, ty, 2, 64);
        let e = small.load_state(bytes.as_slice()).unwrap_err().to_string();
        assert!(e.contains("3 sequences"), "{e}");
    }
}

/// A state of qwen2-tiny with two sequences, a sampler and user data.
fn sample_state(m: &Arc<Model>) -> Vec<u8> {
    let mut a = session(m, KvCacheType::F16, 2, 48);
    a.eval_seq(0, &prompt(7, 5)).unwrap();
    a.eval_seq(1, &prompt(3, 6)).unwrap();
    let sampler = Sampler::new(SamplingParams {
        temperature: 0.7,
        seed: 3,
        ..Default::default()
    });
    let mut bytes = Vec::new();
    a.save_state_with(&mut bytes, Some(&sampler), b"user data")
        .unwrap();
    bytes
}

/// A session with content of its own, to check that failed loads leave it alone.
struct Witness {
    s: Session,
    tokens: Vec<u32>,
    logits: Vec<f32>,
}

impl Witness {
    fn new(m: &Arc<Model>) -> Witness {
        let mut s = session(m, KvCacheType::F16, 2, 48);
        s.eval(&prompt(4, 8)).unwrap();
        let (tokens, logits) = (s.tokens().to_vec(), s.logits().to_vec());
        Witness { s, tokens, logits }
    }

    fn load_fails(&mut self, bytes: &[u8], what: &str) -> String {
        let e = match self.s.load_state(bytes) {
            Ok(_) => panic!("{what}: a bad state loaded"),
            Err(e) => e,
        };
        assert!(matches!(e, Error::State(_)), "{what}: {e:?}");
        assert_eq!(self.s.tokens(), self.tokens.as_slice(), "{what}");
        assert!(self.s.logits() == self.logits.as_slice(), "{what}");
        assert!(self.s.seq_tokens(1).is_empty(), "{what}");
        e.to_string()
    }
}

/// Offsets to damage: every byte of the header, the sequence lists, the sampler and user data
/// (everything before the logits), the checksum, and a spread over the logits and cache rows.
fn offsets(len: usize, header_end: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..header_end.min(len)).collect();
    v.extend(len.saturating_sub(16)..len);
    let mut x = 12345u64;
    for _ in 0..1500 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.push((x >> 33) as usize % len);
    }
    v
}

#[test]
fn every_corruption_is_an_error_and_leaves_the_session_unchanged() {
    let Some(m) = model("qwen2-tiny") else { return };
    let bytes = sample_state(&m);
    let mut w = Witness::new(&m);
    // Magic, version, model header (8 u32 + 2 u64), cache header (3 u32), then the sequences.
    let header_end = 8 + 4 + 32 + 16 + 12 + (12 + 7 * 4) + (12 + 3 * 4);
    let mut flipped = 0;
    for at in offsets(bytes.len(), header_end) {
        for bit in [0, 3, 7] {
            let mut b = bytes.clone();
            b[at] ^= 1 << bit;
            w.load_fails(&b, &format!("bit {bit} of byte {at}"));
            flipped += 1;
        }
    }
    let mut cuts: Vec<usize> = (0..header_end + 64).collect();
    cuts.extend((0..bytes.len()).step_by(997));
    cuts.push(bytes.len() - 1);
    for n in cuts {
        let e = w.load_fails(&bytes[..n], &format!("truncated to {n}"));
        assert!(
            e.contains("truncated") || e.contains("too short") || n < 12,
            "{n}: {e}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(w.load_fails(&longer, "trailing byte").contains("trailing"));
    eprintln!(
        "{flipped} flipped bits and every truncation refused ({} byte state)",
        bytes.len()
    );
    // The untouched state still loads into the witness (2 sequences, F16).
    w.s.load_state(bytes.as_slice()).unwrap();
    assert_eq!(w.s.seq_tokens(1).len(), 3);
}

#[test]
fn header_fields_give_specific_errors() {
    let Some(m) = model("qwen2-tiny") else { return };
    let bytes = sample_state(&m);
    let mut w = Witness::new(&m);
    let set = |at: usize, v: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (set(0, b"QWENSESZ"), "bad magic"),
        (b"GGUF".to_vec(), "too short"),
        (Vec::new(), "too short"),
        (set(8, &2u32.to_le_bytes()), "version 2"),
        (set(12, &0u32.to_le_bytes()), "another model"), // arch
        (set(16, &1000u32.to_le_bytes()), "another model"), // n_vocab
        (set(20, &3u32.to_le_bytes()), "another model"), // n_layer
        (set(44, &[0xAB]), "another model file"),        // weights fingerprint
        (set(52, &[0xAB]), "other model settings"),      // settings fingerprint
        (set(60, &7u32.to_le_bytes()), "KV cache type #7"),
        (set(64, &0u32.to_le_bytes()), "context length 0"),
        (set(68, &0u32.to_le_bytes()), "0 sequences"),
        (set(68, &5000u32.to_le_bytes()), "5000 sequences"),
        (set(72, &100u32.to_le_bytes()), "more than its context"),
        (set(76, &2.0f64.to_le_bytes()), "NTK alpha 2"),
        (set(84, &200_000u32.to_le_bytes()), "token id 200000"),
        (set(bytes.len() - 8, &[0; 8]), "checksum"),
    ];
    for (b, want) in cases {
        let e = w.load_fails(&b, want);
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn states_of_other_models_settings_or_sessions_are_refused() {
    let (Some(q2), Some(q1)) = (model("qwen2-tiny"), model("qwen1-tiny")) else {
        return;
    };
    let bytes = sample_state(&q2);
    // Another architecture.
    let mut s = session(&q1, KvCacheType::F16, 2, 48);
    let e = s.load_state(bytes.as_slice()).unwrap_err().to_string();
    assert!(e.contains("another model"), "{e}");
    // The same checkpoint converted to F16 weights: same shape, another file.
    let q2_f16 = Arc::new(Model::load(common::tiny_gguf("qwen2-tiny", "f16").unwrap()).unwrap());
    let mut s = session(&q2_f16, KvCacheType::F16, 2, 48);
    let e = s.load_state(bytes.as_slice()).unwrap_err().to_string();
    assert!(e.contains("another model file"), "{e}");
    // The same file with YaRN turned on: the cache was computed with other frequencies.
    let mut yarn = Model::load(common::tiny_gguf("qwen2-tiny", "f32").unwrap()).unwrap();
    yarn.config.rope_scaling = RopeScaling::Yarn(Yarn::new(4.0, 16));
    let mut s = session(&Arc::new(yarn), KvCacheType::F16, 2, 48);
    let e = s.load_state(bytes.as_slice()).unwrap_err().to_string();
    assert!(e.contains("settings"), "{e}");
    // Right model, wrong session: cache type, sequences, context.
    let mut w = Witness::new(&q2);
    let mut q8 = session(&q2, KvCacheType::Q8, 2, 48);
    let e = q8.load_state(bytes.as_slice()).unwrap_err().to_string();
    assert!(e.contains("f16") && e.contains("q8"), "{e}");
    let mut one = session(&q2, KvCacheType::F16, 1, 48);
    let e = one.load_state(bytes.as_slice()).unwrap_err().to_string();
    assert!(e.contains("2 sequences"), "{e}");
    let mut short = session(&q2, KvCacheType::F16, 2, 6);
    let e = short.load_state(bytes.as_slice()).unwrap_err().to_string();
    assert!(e.contains("7 tokens") && e.contains("holds 6"), "{e}");
    // The SessionState API: read once, inspect, restore; a restored-and-released state is
    // refused the second time.
    let st = SessionState::read(&q2, bytes.as_slice()).unwrap();
    assert_eq!((st.n_seq(), st.max_seq_len(), st.n_ctx()), (2, 7, 48));
    assert_eq!(st.kv_cache_type(), KvCacheType::F16);
    assert_eq!(st.seq_tokens(1), prompt(3, 6).as_slice());
    w.s.restore_state(&st).unwrap();
    let released = w.s.load_state(bytes.as_slice()).unwrap();
    let e = w.s.restore_state(&released).unwrap_err().to_string();
    assert!(e.contains("released"), "{e}");
}

#[test]
fn files_round_trip_and_a_missing_file_is_an_io_error() {
    let Some(m) = model("qwen1-tiny") else { return };
    let mut a = session(&m, KvCacheType::Q8, 1, 128);
    a.eval(&prompt(70, 7)).unwrap();
    let path = common::unique_path("state", "qwst");
    let n = a.save_state_file(&path, None, &[]).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), n);
    let mut b = session(&m, KvCacheType::Q8, 1, 128);
    let st = b.load_state_file(&path).unwrap();
    assert!(st.sampler().is_none() && st.user_data().is_empty());
    assert_eq!(b.tokens(), a.tokens());
    assert_eq!(b.ntk_alpha(), a.ntk_alpha());
    std::fs::remove_file(&path).unwrap();
    let e = b.load_state_file(&path).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_eq!(b.tokens(), a.tokens());
}

fn qwen(args: &[&str], model: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(args)
        .arg("-m")
        .arg(model)
        .args(["-t", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn cli_save_then_load_continues_one_run() {
    let Some(path) = common::tiny_gguf("qwen2-tiny", "f32") else {
        return;
    };
    let state: PathBuf = common::unique_path("cli-state", "qwst");
    let state_s = state.to_str().unwrap();
    let p = "The quick brown fox";
    for sampling in [
        &["--temp", "0"][..],
        &["--temp", "0.9", "--seed", "11", "--top-k", "40"][..],
    ] {
        let run = |extra: &[&str]| {
            let mut args = vec!["run"];
            args.extend_from_slice(sampling);
            args.extend_from_slice(extra);
            qwen(&args, &path)
        };
        let whole = ids(&run(&["-p", p, "-n", "12"]));
        let first = ids(&run(&["-p", p, "-n", "5", "--save-session", state_s]));
        let rest = run(&["--load-session", state_s, "-n", "7"]);
        assert_eq!(rest["prompt_ids"].as_array().unwrap().len(), 0);
        let mut joined = first.clone();
        joined.extend(ids(&rest));
        assert_eq!(joined, whole, "{sampling:?}");
    }
    // Appending text after a loaded session equals one run over the same tokens.
    let saved = qwen(
        &[
            "run",
            "--temp",
            "0",
            "-p",
            p,
            "-n",
            "0",
            "--save-session",
            state_s,
        ],
        &path,
    );
    assert!(ids(&saved).is_empty());
    let more = qwen(
        &[
            "run",
            "--temp",
            "0",
            "--load-session",
            state_s,
            "-p",
            " jumps",
            "-n",
            "6",
        ],
        &path,
    );
    let all_ids: Vec<u64> = saved["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .chain(more["prompt_ids"].as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .collect();
    let ids_arg: Vec<String> = all_ids.iter().map(|i| i.to_string()).collect();
    // The same continuation from the raw ids: `logits` is greedy's first step.
    let out = Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(["logits", "-t", "2", "--ids", &ids_arg.join(",")])
        .arg("-m")
        .arg(&path)
        .output()
        .unwrap();
    let logits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row: Vec<f32> = logits["logits"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NEG_INFINITY) as f32)
        .collect();
    assert_eq!(argmax(&row) as u64, ids(&more)[0]);

    // A chat saved after one turn continues with the next one like `qwen chat` does.
    let chat_state = common::unique_path("cli-chat-state", "qwst");
    let cs = chat_state.to_str().unwrap();
    let t1 = qwen(
        &[
            "run",
            "--chat",
            "--temp",
            "0",
            "-n",
            "6",
            "-p",
            "Hi",
            "--save-session",
            cs,
        ],
        &path,
    );
    let t2 = qwen(
        &[
            "run",
            "--chat",
            "--temp",
            "0",
            "-n",
            "6",
            "-p",
            "More",
            "--load-session",
            cs,
        ],
        &path,
    );
    assert_eq!(t2["turns_kept"], 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(["chat", "-q", "--temp", "0", "-n", "6", "-t", "2", "-m"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi\nMore\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let want = format!(
        "{}\n{}\n",
        t1["text"].as_str().unwrap(),
        t2["text"].as_str().unwrap()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    // Loading a chat session without --chat (and a raw one with it) is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(["run", "-p", "x", "-n", "1", "--load-session", cs, "-m"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--chat"));
    std::fs::remove_file(&state).unwrap();
    std::fs::remove_file(&chat_state).unwrap();
}
