//! The tiny Qwen-1 and Qwen-2 checkpoints, converted to F32 GGUF, against the reference Python
//! implementation's goldens (testdata/public): logits within 1e-4 max-abs, greedy ids identical.

mod common;

use qwen::model::Model;
use qwen::sampler::{argmax, Sampler, SamplingParams};
use qwen::session::{Session, SessionParams};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

const TOL: f32 = 1e-4;

/// Reads a little-endian f32 `.npy` file: (shape, data).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"));
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn session(model: &Arc<Model>) -> Session {
    Session::new(
        Arc::clone(model),
        &SessionParams {
            n_ctx: 256,
            n_threads: 2,
            max_batch: 64,
        },
    )
    .unwrap()
}

/// Prefill then greedy decode with the KV cache, EOS ignored (as the goldens were made).
fn greedy(model: &Arc<Model>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = session(model);
    s.eval(prompt).unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    s.generate(&mut sampler, n, &[], |_| true).unwrap().0
}

fn load(name: &str) -> Option<(Arc<Model>, Value, std::path::PathBuf)> {
    let data = common::testdata()?;
    let gguf = common::tiny_gguf(name, "f32")?;
    let goldens_name = if name == "qwen1-tiny" {
        "qwen1_model_goldens.json"
    } else {
        "qwen2_model_goldens.json"
    };
    let goldens: Value =
        serde_json::from_slice(&std::fs::read(data.join("public").join(goldens_name)).unwrap())
            .unwrap();
    Some((
        Arc::new(Model::load(gguf).unwrap()),
        goldens,
        data.join("public"),
    ))
}

fn check_last_logits_and_greedy(name: &str) {
    let Some((model, goldens, public)) = load(name) else {
        return;
    };
    let v = model.config.n_vocab;
    let mut npy_cache: Option<(String, Vec<f32>)> = None;
    for p in goldens["prompts"].as_array().unwrap() {
        let pname = p["name"].as_str().unwrap();
        let input = ids(&p["input_ids"]);
        let npy = p["last_logits"]["npy"].as_str().unwrap().to_string();
        if npy_cache.as_ref().map(|c| &c.0) != Some(&npy) {
            npy_cache = Some((npy.clone(), read_npy(&public.join(&npy)).1));
        }
        let row = p["last_logits"]["row"].as_u64().unwrap() as usize;
        let want = &npy_cache.as_ref().unwrap().1[row * v..(row + 1) * v];
        let mut s = session(&model);
        let got = s.eval(&input).unwrap();
        let diff = max_abs_diff(got, want);
        assert!(diff < TOL, "{name} {pname}: last logits differ by {diff}");
        if let Some(alpha) = p.get("ntk_alpha_at_prefill").and_then(Value::as_f64) {
            assert_eq!(s.ntk_alpha(), alpha, "{name} {pname}: NTK alpha");
        }
        let want_greedy = ids(&p["greedy"]["new_token_ids"]);
        let got_greedy = greedy(&model, &input, want_greedy.len());
        assert_eq!(
            got_greedy, want_greedy,
            "{name} {pname}: greedy continuation"
        );
        eprintln!(
            "{name} {pname}: {} tokens, max |Δlogit| {diff:.2e}, greedy equal",
            input.len()
        );
    }
}

#[test]
fn qwen2_tiny_last_logits_and_greedy() {
    check_last_logits_and_greedy("qwen2-tiny");
}

#[test]
fn qwen1_tiny_last_logits_and_greedy() {
    check_last_logits_and_greedy("qwen1-tiny");
}

#[test]
fn qwen1_tiny_all_position_logits() {
    let Some((model, goldens, public)) = load("qwen1-tiny") else {
        return;
    };
    let all = &goldens["all_positions"];
    let prompt_name = all["prompt"].as_str().unwrap();
    let p = goldens["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == prompt_name)
        .unwrap();
    let (shape, want) = read_npy(&public.join(all["npy"].as_str().unwrap()));
    let mut s = session(&model);
    let got = s.eval_all_logits(&ids(&p["input_ids"])).unwrap();
    assert_eq!(
        shape,
        vec![got.len() / model.config.n_vocab, model.config.n_vocab]
    );
    let diff = max_abs_diff(&got, &want);
    assert!(diff < TOL, "all-position logits differ by {diff}");
    // Argmax at every position, too.
    for (i, row) in got.chunks_exact(model.config.n_vocab).enumerate() {
        assert_eq!(
            argmax(row) as u64,
            p["argmax_per_position"][i].as_u64().unwrap(),
            "position {i}"
        );
    }
}

/// The reference reloaded with `use_dynamic_ntk` / `use_logn_attn` switched off, reproduced with
/// the CLI's `--no-dynamic-ntk` / `--no-logn` on `qwen logits` and `qwen run`.
#[test]
fn qwen1_tiny_ntk_logn_ablation_through_the_cli() {
    let Some((model, goldens, public)) = load("qwen1-tiny") else {
        return;
    };
    let gguf = common::tiny_gguf("qwen1-tiny", "f32").unwrap();
    let ab = &goldens["ntk_logn_ablation"];
    let p = goldens["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == ab["prompt"])
        .unwrap();
    let input = ids(&p["input_ids"]);
    let id_list = input
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let (_, want_all) = read_npy(&public.join(ab["npy"].as_str().unwrap()));
    let v = model.config.n_vocab;
    for variant in ab["variants"].as_array().unwrap() {
        let mut switches = Vec::new();
        if variant["use_dynamic_ntk"] == false {
            switches.push("--no-dynamic-ntk");
        }
        if variant["use_logn_attn"] == false {
            switches.push("--no-logn");
        }
        let run = |args: &[&str]| -> Value {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen"))
                .args(args)
                .args(["-m", gguf.to_str().unwrap(), "-t", "2"])
                .args(&switches)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let got = run(&["logits", "--ids", &id_list]);
        let got: Vec<f32> = got["logits"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let row = variant["row"].as_u64().unwrap() as usize;
        let diff = max_abs_diff(&got, &want_all[row * v..(row + 1) * v]);
        let name = variant["variant"].as_str().unwrap();
        assert!(diff < TOL, "{name}: logits differ by {diff}");
        let text = p["text"].as_str().unwrap();
        let gen = run(&["run", "-p", text, "--temp", "0", "-n", "24", "--json"]);
        assert_eq!(gen["prompt_ids"], p["input_ids"], "{name}: prompt ids");
        assert_eq!(
            gen["generated_ids"], variant["greedy_new_token_ids"],
            "{name}: greedy"
        );
        eprintln!("{name}: max |Δlogit| {diff:.2e}, greedy equal");
    }
}

/// `make_context` + greedy decoding on the tiny Qwen-1 (chat_greedy goldens).
#[test]
fn qwen1_tiny_chat_greedy() {
    use qwen::chat::{make_context, ChatTokens, Turn};
    let Some((model, goldens, _)) = load("qwen1-tiny") else {
        return;
    };
    let tok = model.tokenizer().unwrap();
    let ct = ChatTokens::from_tokenizer(tok).unwrap();
    for case in goldens["chat_greedy"]["cases"].as_array().unwrap() {
        let history: Vec<Turn> = case["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| Turn {
                user: t[0].as_str().unwrap().into(),
                assistant: t[1].as_str().unwrap().into(),
            })
            .collect();
        let ctx = make_context(
            tok,
            &ct,
            case["system"].as_str().unwrap(),
            &history,
            case["query"].as_str().unwrap(),
            case["max_window_size"].as_u64().unwrap() as usize,
        );
        assert_eq!(ctx.ids, ids(&case["context_ids"]), "context ids");
        let want = ids(&case["greedy_new_token_ids"]);
        assert_eq!(greedy(&model, &ctx.ids, want.len()), want, "greedy");
    }
}
