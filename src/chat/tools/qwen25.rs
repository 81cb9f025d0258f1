//! The Qwen2.5 tool format, as the chat template embedded in Qwen2.5 GGUF files renders it
//! (with transformers' template environment: `tojson` is `json.dumps(x, ensure_ascii=False)`).
//!
//! ```text
//! <|im_start|>system
//! {system, or the template's default}
//!
//! # Tools ... <tools>
//! {"type": "function", "function": {..}}      one line per tool
//! </tools> ... <|im_end|>
//! <|im_start|>user
//! {content}<|im_end|>
//! <|im_start|>assistant
//! {content, when not empty}
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call><|im_end|>
//! <|im_start|>user
//! <tool_response>
//! {result 1}
//! </tool_response>
//! <tool_response>
//! {result 2}
//! </tool_response><|im_end|>
//! <|im_start|>assistant
//! ```
//!
//! The instruction texts around the tool list are read from the file's template
//! ([`Qwen25Template::from_chat_template`]): they differ between models (the 1.5B Coder's
//! template shows the call shape with doubled braces), and the prompt must be the one the model
//! was trained on.

use super::{invalid, pyjson, ChatMessage, FinishKind, FunctionSpec, ParsedReply};
use super::{PromptPieces, Role, ToolCall};
use crate::chat::py_strip;
use crate::error::Result;
use serde_json::{Map, Value};

/// The default system prompt of Qwen2.5's template.
pub const DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

const DEFAULT_TOOLS_HEADER: &str = "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>";

const DEFAULT_TOOLS_FOOTER: &str = "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

/// The texts of a Qwen2.5 chat template that the format's structure does not fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qwen25Template {
    /// The system prompt when the conversation has none.
    pub default_system: String,
    /// Between the system prompt and the first tool (ends with `<tools>`).
    pub tools_header: String,
    /// After the last tool, ending the system turn (starts with `\n</tools>`).
    pub tools_footer: String,
}

impl Default for Qwen25Template {
    /// The texts of the Qwen2.5(-Coder-0.5B) Instruct template.
    fn default() -> Self {
        Qwen25Template {
            default_system: DEFAULT_SYSTEM.into(),
            tools_header: DEFAULT_TOOLS_HEADER.into(),
            tools_footer: DEFAULT_TOOLS_FOOTER.into(),
        }
    }
}

impl Qwen25Template {
    /// Reads the texts from the string literals of a Jinja chat template: the default system
    /// prompt from `'<|im_start|>system\n…<|im_end|>\n'`, the tool list's header (the literal
    /// that ends with `<tools>`) and footer (the one that starts with `\n</tools>`). Texts the
    /// template lacks keep the built-in Qwen2.5 ones.
    pub fn from_chat_template(template: &str) -> Qwen25Template {
        let mut t = Qwen25Template::default();
        let literals = jinja_string_literals(template);
        if let Some(sys) = literals.iter().find_map(|l| {
            l.strip_prefix("<|im_start|>system\n")
                .and_then(|s| s.strip_suffix("<|im_end|>\n"))
                .filter(|s| !s.is_empty())
        }) {
            t.default_system = sys.to_string();
        }
        if let Some(h) = literals.iter().find(|l| l.ends_with("<tools>")) {
            t.tools_header = h.clone();
        }
        if let Some(f) = literals.iter().find(|l| l.starts_with("\n</tools>")) {
            t.tools_footer = f.clone();
        }
        t
    }
}

/// Every string literal inside the `{{ }}` and `{% %}` tags of a Jinja template, unescaped the
/// way Jinja does (Python's `unicode-escape`).
pub fn jinja_string_literals(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = match after.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            Some('#') => {
                // A comment: skip to its end.
                match after.find("#}") {
                    Some(e) => {
                        rest = &after[e + 2..];
                        continue;
                    }
                    None => break,
                }
            }
            _ => {
                rest = after;
                continue;
            }
        };
        let mut body = &after[1..];
        loop {
            let q = body.find(['\'', '"']);
            let c = body.find(close);
            match (q, c) {
                (Some(q), Some(c)) if q < c => {
                    let quote = body.as_bytes()[q] as char;
                    let (lit, len) = scan_literal(&body[q + 1..], quote);
                    out.push(lit);
                    body = &body[(q + 1 + len).min(body.len())..];
                }
                (_, Some(c)) => {
                    body = &body[c + close.len()..];
                    break;
                }
                (_, None) => {
                    body = "";
                    break;
                }
            }
        }
        rest = body;
    }
    out
}

/// The unescaped literal starting right after its opening quote, and how many bytes it took
/// (closing quote included).
fn scan_literal(s: &str, quote: char) -> (String, usize) {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return (out, i + 1);
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, e)) = chars.next() else {
            out.push('\\');
            break;
        };
        match e {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            '"' => out.push('"'),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            '\n' => {}
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                match read_hex(&mut chars, n) {
                    Ok(ch) => out.push(ch),
                    Err(text) => {
                        out.push('\\');
                        out.push(e);
                        out.push_str(&text);
                    }
                }
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    (out, s.len())
}

/// `n` hex digits as a character; on failure, the digits read.
fn read_hex(
    chars: &mut std::iter::Peekable<std::str::CharIndices>,
    n: usize,
) -> std::result::Result<char, String> {
    let mut v = 0u32;
    let mut text = String::new();
    for _ in 0..n {
        match chars.peek() {
            Some(&(_, h)) if h.is_ascii_hexdigit() => {
                v = v * 16 + h.to_digit(16).expect("hex digit");
                text.push(h);
                chars.next();
            }
            _ => return Err(text),
        }
    }
    char::from_u32(v).ok_or(text)
}

/// `x | tojson` for call arguments: JSON text is re-serialized as `json.dumps` writes the
/// parsed value (servers parse OpenAI's argument strings before applying the template);
/// anything else is written as a JSON string.
fn arguments_json(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v) => pyjson::dumps(&v),
        Err(_) => pyjson::dumps(&Value::String(arguments.to_string())),
    }
}

/// One tool line: `{"type": "function", "function": {..}}` with the function as given.
pub fn tool_json(f: &FunctionSpec) -> String {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("function".into()));
    m.insert("function".into(), Value::Object(f.as_object().clone()));
    pyjson::dumps(&Value::Object(m))
}

/// Renders `messages` (and `functions`, when any) as the template does with
/// `add_generation_prompt=True`. `function` messages count as `tool` messages (the template has
/// no branch for them and would drop them). Errors for an empty conversation and for a result
/// that follows no call.
pub fn render(
    t: &Qwen25Template,
    messages: &[ChatMessage],
    functions: &[FunctionSpec],
) -> Result<PromptPieces> {
    if messages.is_empty() {
        return Err(invalid("no messages"));
    }
    let role = |i: usize| match messages[i].role {
        Role::Function => Role::Tool,
        r => r,
    };
    // A result must answer a call: the message before it is a call or another result.
    for i in 0..messages.len() {
        if role(i) == Role::Tool {
            let ok = i > 0
                && (role(i - 1) == Role::Tool
                    || (role(i - 1) == Role::Assistant && !messages[i - 1].tool_calls.is_empty()));
            if !ok {
                return Err(invalid(format!(
                    "the {} message at position {i} follows no assistant message with tool calls",
                    messages[i].role.as_str()
                )));
            }
        }
    }

    let mut p = PromptPieces::default();
    let has_system = messages[0].role == Role::System;
    p.template("<|im_start|>system\n");
    if has_system {
        p.content(&messages[0].content);
    } else {
        p.template(&t.default_system);
    }
    if functions.is_empty() {
        p.template("<|im_end|>\n");
    } else {
        p.template(&t.tools_header);
        for f in functions {
            p.template("\n");
            p.content(&tool_json(f));
        }
        p.template(&t.tools_footer);
    }
    let n = messages.len();
    for (i, m) in messages.iter().enumerate() {
        match role(i) {
            Role::System if i == 0 => {}
            r @ (Role::User | Role::System) => plain_turn(&mut p, r, &m.content),
            Role::Assistant if m.tool_calls.is_empty() => {
                plain_turn(&mut p, Role::Assistant, &m.content)
            }
            Role::Assistant => {
                p.template("<|im_start|>assistant");
                if !m.content.is_empty() {
                    p.template("\n");
                    p.content(&m.content);
                }
                for c in &m.tool_calls {
                    p.template("\n<tool_call>\n{\"name\": \"");
                    p.content(&c.name);
                    p.template("\", \"arguments\": ");
                    p.content(&arguments_json(&c.arguments));
                    p.template("}\n</tool_call>");
                }
                p.template("<|im_end|>\n");
            }
            Role::Tool | Role::Function => {
                if i == 0 || role(i - 1) != Role::Tool {
                    p.template("<|im_start|>user");
                }
                p.template("\n<tool_response>\n");
                p.content(&m.content);
                p.template("\n</tool_response>");
                if i == n - 1 || role(i + 1) != Role::Tool {
                    p.template("<|im_end|>\n");
                }
            }
        }
    }
    p.template("<|im_start|>assistant\n");
    Ok(p)
}

fn plain_turn(p: &mut PromptPieces, role: Role, content: &str) {
    p.template("<|im_start|>");
    p.template(role.as_str());
    p.template("\n");
    p.content(content);
    p.template("<|im_end|>\n");
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Parses generated text: every `<tool_call>…</tool_call>` block holding a JSON object with a
/// string `name` and `arguments` (an object, or a string of JSON text) becomes a call; its
/// `arguments` are kept as `json.dumps` text. A block that does not parse, and an unclosed
/// `<tool_call>`, stay in the content as text. With calls, the content is the text outside the
/// blocks, stripped; without, the text unchanged.
pub fn parse_response(text: &str) -> ParsedReply {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(a) = rest.find(OPEN) {
        let inner_start = a + OPEN.len();
        let Some(b) = rest[inner_start..].find(CLOSE) else {
            break;
        };
        let end = inner_start + b + CLOSE.len();
        match parse_call(&rest[inner_start..inner_start + b]) {
            Some(call) => {
                content.push_str(&rest[..a]);
                calls.push(call);
            }
            None => content.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    content.push_str(rest);
    if calls.is_empty() {
        return ParsedReply::text(content);
    }
    ParsedReply {
        content: py_strip(&content).to_string(),
        tool_calls: calls,
        finish: FinishKind::ToolCalls,
    }
}

/// [`parse_response`], plus one leniency for replies without any `<tool_call>` block: when the
/// whole reply (optionally in one Markdown code fence) is a sequence of JSON call objects that
/// all name offered `functions`, those are the calls. Small models often drop the tags (the
/// 0.5B Coder does, greedily, for the weather question of `tests/tools.rs`), and llama.cpp's
/// parser for this format accepts a bare `{"name": ..` as well; requiring known names keeps an
/// answer that merely talks about JSON a plain answer.
pub fn parse_response_lenient(text: &str, functions: &[String]) -> ParsedReply {
    let reply = parse_response(text);
    if !reply.tool_calls.is_empty() || text.contains(OPEN) {
        return reply;
    }
    let mut body = py_strip(text);
    if let Some(fenced) = body.strip_prefix("```") {
        match (fenced.find('\n'), fenced.strip_suffix("```")) {
            (Some(nl), Some(inner)) if nl <= inner.len() => body = &inner[nl..],
            _ => return reply,
        }
    }
    let mut calls = Vec::new();
    for v in serde_json::Deserializer::from_str(body).into_iter::<Value>() {
        match v.ok().and_then(|v| call_of(&v)) {
            Some(c) if functions.contains(&c.name) => calls.push(c),
            _ => return reply,
        }
    }
    if calls.is_empty() {
        return reply;
    }
    ParsedReply {
        content: String::new(),
        tool_calls: calls,
        finish: FinishKind::ToolCalls,
    }
}

fn parse_call(inner: &str) -> Option<ToolCall> {
    call_of(&serde_json::from_str(inner.trim()).ok()?)
}

fn call_of(v: &Value) -> Option<ToolCall> {
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str().filter(|s| !s.is_empty())?;
    let arguments = match obj.get("arguments")? {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => pyjson::dumps(other),
    };
    Some(ToolCall::new(name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_unescaped_like_jinja() {
        let t = r#"{%- if a == 'x' %}{{- "a\n\"b\"\\" + 'c\'d' }}{# 'not' #}{{ "\u00e9\x41\q" }}{%- endif %} 'outside'"#;
        assert_eq!(
            jinja_string_literals(t),
            vec!["x", "a\n\"b\"\\", "c'd", "éA\\q"]
        );
    }

    #[test]
    fn template_texts_with_fallbacks() {
        let t = Qwen25Template::from_chat_template("{{ 'no tools here' }}");
        assert_eq!(t, Qwen25Template::default());
        let t = Qwen25Template::from_chat_template(
            r#"{{- '<|im_start|>system\nBe brief.<|im_end|>\n' }}{{- "\n\n# T\n<tools>" }}{{- "\n</tools>\n{{x}}<|im_end|>\n" }}"#,
        );
        assert_eq!(t.default_system, "Be brief.");
        assert_eq!(t.tools_header, "\n\n# T\n<tools>");
        assert_eq!(t.tools_footer, "\n</tools>\n{{x}}<|im_end|>\n");
    }

    #[test]
    fn parse_cases() {
        let one =
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"b\": 1, \"a\": \"x\"}}\n</tool_call>";
        assert_eq!(
            parse_response(one),
            ParsedReply {
                content: String::new(),
                tool_calls: vec![ToolCall::new("f", "{\"b\": 1, \"a\": \"x\"}")],
                finish: FinishKind::ToolCalls,
            }
        );
        // Text around and between calls is kept; string arguments pass through.
        let two = "Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": \"{}\"}\n</tool_call>\n<tool_call>{\"name\":\"g\",\"arguments\":{}}</tool_call>\nDone.";
        let r = parse_response(two);
        assert_eq!(r.content, "Let me check.\n\n\nDone.");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall::new("f", "{}"), ToolCall::new("g", "{}")]
        );
        // Malformed blocks stay as text; the good one still counts.
        let bad = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>";
        assert_eq!(parse_response(bad), ParsedReply::text(bad));
        let mixed = format!("{bad}\n{one}");
        let r = parse_response(&mixed);
        assert_eq!(r.content, bad);
        assert_eq!(r.tool_calls.len(), 1);
        for text in [
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\"}</tool_call>",
            "<tool_call>[1]</tool_call>",
            "</tool_call><tool_call>",
            "plain",
            "",
        ] {
            assert_eq!(parse_response(text), ParsedReply::text(text), "{text}");
        }
    }

    #[test]
    fn bare_json_calls_of_offered_functions() {
        let f = vec!["f".to_string(), "g".to_string()];
        let call = |n: &str, a: &str| ToolCall::new(n, a);
        let r = parse_response_lenient("{\"name\": \"f\", \"arguments\": {\"a\": 1}}", &f);
        assert_eq!(r.tool_calls, vec![call("f", "{\"a\": 1}")]);
        assert_eq!((r.content.as_str(), r.finish), ("", FinishKind::ToolCalls));
        let r = parse_response_lenient(
            "\n```json\n{\"name\": \"f\", \"arguments\": {}}\n{\"name\": \"g\", \"arguments\": \"{}\"}\n```\n",
            &f,
        );
        assert_eq!(r.tool_calls, vec![call("f", "{}"), call("g", "{}")]);
        for text in [
            // Unknown function, extra text, one bad object, not an object, a tagged reply's
            // malformed block, an unterminated fence.
            "{\"name\": \"h\", \"arguments\": {}}",
            "Call {\"name\": \"f\", \"arguments\": {}}",
            "{\"name\": \"f\", \"arguments\": {}} {\"name\": \"f\"}",
            "[{\"name\": \"f\", \"arguments\": {}}]",
            "<tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>",
            "```json\n{\"name\": \"f\", \"arguments\": {}}",
            "",
        ] {
            assert_eq!(
                parse_response_lenient(text, &f),
                ParsedReply::text(text),
                "{text}"
            );
        }
        // Tagged calls are parsed as usual (any name).
        let r = parse_response_lenient(
            "<tool_call>{\"name\": \"h\", \"arguments\": {}}</tool_call>",
            &f,
        );
        assert_eq!(r.tool_calls, vec![call("h", "{}")]);
    }

    #[test]
    fn arguments_as_tojson() {
        assert_eq!(
            arguments_json("{\"a\":1,\"b\":[true,null]}"),
            "{\"a\": 1, \"b\": [true, null]}"
        );
        assert_eq!(arguments_json("not json"), "\"not json\"");
        assert_eq!(arguments_json("\"s\""), "\"s\"");
    }
}
