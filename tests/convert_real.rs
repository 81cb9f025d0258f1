//! Re-quantizing the real Qwen2.5-Coder-0.5B GGUF (Q4_K_M, made by llama.cpp) to Q8_0 gives a
//! file that loads, tokenizes the same and still answers like the original: greedy ids follow
//! llama.cpp's on the original file until its first near-tie (re-quantizing moves logits a
//! little), and the answers are on topic.

mod common;

use qwen::convert::{convert, ConvertOptions, OutType};
use qwen::gguf::{GgmlType, GgufFile};
use serde_json::Value;
use std::process::Command;

#[test]
fn requantized_0_5b_q8_0_still_answers() {
    let Some(data) = common::testdata() else {
        return;
    };
    let goldens: Value =
        serde_json::from_slice(&std::fs::read(data.join("llamacpp/goldens_0.5b.json")).unwrap())
            .unwrap();
    let model = common::models_dir().join(goldens["model_file"].as_str().unwrap());
    if !model.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} missing (scripts/fetch-models.sh)",
            model.display()
        );
        eprintln!(
            "SKIP: {} missing (scripts/fetch-models.sh)",
            model.display()
        );
        return;
    }
    let out = common::unique_path("qwen2.5-coder-0.5b-q8_0", "gguf");
    let mut opts = ConvertOptions::new(&model, &out);
    opts.out_type = OutType::parse("q8_0").unwrap();
    let t0 = std::time::Instant::now();
    let report = convert(&opts, &mut |_| {}).unwrap();
    eprintln!(
        "re-quantized {} tensors in {:.1}s, {} MiB",
        report.tensors.len(),
        t0.elapsed().as_secs_f64(),
        report.data_bytes >> 20
    );
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(
        f.tensor("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    assert_eq!(
        f.tensor("blk.0.attn_norm.weight").unwrap().ty,
        GgmlType::F32
    );
    assert_eq!(f.get_str("general.architecture").unwrap(), "qwen2");
    drop(f);

    let system = goldens["system_prompt"].as_str().unwrap();
    // Two prompts (English code, Chinese) keep the test to a couple of minutes on 2 cores.
    for p in goldens["prompts"].as_array().unwrap().iter().take(2) {
        let id = p["id"].as_str().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_qwen"))
            .args([
                "run", "--chat", "--temp", "0", "-n", "16", "--json", "-t", "2", "-m",
            ])
            .arg(&out)
            .args(["--system", system, "-p", p["question"].as_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            got["prompt_ids"], p["prompt_ids"],
            "{id}: the carried-over tokenizer"
        );
        let want: Vec<u64> = p["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let gaps: Vec<f64> = p["top1_top2_logit_gap"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let ids: Vec<u64> = got["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        // Q4_K_M → Q8_0 adds Q8_0 rounding: trust llama.cpp's path only while its choice is clear.
        let n = (0..want.len().min(16))
            .take_while(|&i| gaps[i] >= 1.0)
            .count();
        assert_eq!(
            ids[..n.min(ids.len())],
            want[..n],
            "{id}: greedy ids (first {n})"
        );
        eprintln!("{id}: first {n} greedy ids as llama.cpp's; {}", got["text"]);
    }
    std::fs::remove_file(out).unwrap();
}

/// The merges we derive from `qwen.tiktoken` ranks are exactly the `merges.txt` that llama.cpp
/// copied into the real Qwen2.5 GGUF, and the byte-level tokens match (same ranks).
#[test]
fn derived_merges_equal_llama_cpp_qwen2_5() {
    let Some(data) = common::testdata() else {
        return;
    };
    let goldens: Value =
        serde_json::from_slice(&std::fs::read(data.join("llamacpp/goldens_0.5b.json")).unwrap())
            .unwrap();
    let model = common::models_dir().join(goldens["model_file"].as_str().unwrap());
    if !model.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} missing (scripts/fetch-models.sh)",
            model.display()
        );
        eprintln!(
            "SKIP: {} missing (scripts/fetch-models.sh)",
            model.display()
        );
        return;
    }
    let ours = GgufFile::open(common::tiny_gguf("qwen1-tiny", "f32").unwrap()).unwrap();
    let theirs = GgufFile::open(&model).unwrap();
    let merges = |f: &GgufFile| {
        f.get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        merges(&ours) == merges(&theirs),
        "merges differ from llama.cpp's"
    );
    let (a, b) = (
        ours.get_str_array("tokenizer.ggml.tokens").unwrap(),
        theirs.get_str_array("tokenizer.ggml.tokens").unwrap(),
    );
    assert!(a[..151646] == b[..151646], "tokens differ");
}
