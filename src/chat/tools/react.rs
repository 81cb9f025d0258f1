//! Qwen-1's ReAct function calling, exactly as the reference `openai_api.py` builds and parses
//! it (`parse_messages`, `parse_response`, `text_complete_last_message`).
//!
//! The function specs become an instruction (`REACT_INSTRUCTION` with one `TOOL_DESC` line per
//! function) that is put in front of the last user question: the query when the conversation
//! ends with a user message, else the user message of the last history turn. An assistant call
//! is written as `Thought: ..\nAction: name\nAction Input: args`, a function result is appended
//! to that assistant turn as `\nObservation: result`, and when a result comes last the turn is
//! left open after `\nThought:` for the model to continue. A plain assistant answer in a
//! conversation with functions reads `Thought: I now know the final answer.\nFinal Answer: ..`.

use super::{invalid, lstrip_nl_rstrip, pyjson, ChatMessage, FinishKind, FunctionSpec};
use super::{ParsedReply, PromptPieces, Role, ToolCall};
use crate::chat::{py_strip, Turn, DEFAULT_SYSTEM_PROMPT};
use crate::error::Result;

/// The stop string the reference adds when functions are given.
pub const STOP_WORD: &str = "Observation:";

/// What `parse_messages` returns: the arguments of `model.chat`, or of
/// `text_complete_last_message` when `query` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactQuery {
    pub system: String,
    pub history: Vec<Turn>,
    /// The last user message (with the instruction in front when there is no history turn to
    /// carry it); `None` when the conversation ends with an assistant or function message.
    pub query: Option<String>,
}

/// `TOOL_DESC` for one function.
pub fn tool_desc(f: &FunctionSpec) -> String {
    let params = match f.parameters() {
        Some(p) => pyjson::dumps(p),
        // The reference requires `parameters`; OpenAI allows leaving it out for a function
        // without arguments, which is what an empty object says.
        None => "{}".to_string(),
    };
    format!(
        "{m}: Call this tool to interact with the {h} API. What is the {h} API useful for? {d} \
         Parameters: {params}",
        m = f.name_for_model(),
        h = f.name_for_human(),
        d = f.description_for_model(),
    )
}

/// `REACT_INSTRUCTION` for `functions` (after the reference's `.lstrip('\n').rstrip()`).
pub fn instruction(functions: &[FunctionSpec]) -> String {
    let tools_text = functions
        .iter()
        .map(tool_desc)
        .collect::<Vec<_>>()
        .join("\n\n");
    let tools_name_text = functions
        .iter()
        .map(|f| f.name_for_model())
        .collect::<Vec<_>>()
        .join(", ");
    let s = format!(
        "Answer the following questions as best you can. You have access to the following APIs:

{tools_text}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{tools_name_text}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!"
    );
    lstrip_nl_rstrip(&s).to_string()
}

/// The reference's `parse_messages`, with its checks as errors. `tool` messages are treated
/// as `function` messages and `tool_calls` as a `function_call` (the format carries one call
/// per assistant message).
pub fn parse_messages(messages: &[ChatMessage], functions: &[FunctionSpec]) -> Result<ReactQuery> {
    if messages.is_empty() {
        return Err(invalid("no messages"));
    }
    if messages.iter().all(|m| m.role != Role::User) {
        return Err(invalid("expecting at least one user message"));
    }
    let (system, rest) = if messages[0].role == Role::System {
        (lstrip_nl_rstrip(&messages[0].content), &messages[1..])
    } else {
        (DEFAULT_SYSTEM_PROMPT, messages)
    };
    let mut instruction = if functions.is_empty() {
        String::new()
    } else {
        instruction(functions)
    };

    // Function results fold into the assistant turn before them; consecutive assistant
    // messages join into one turn.
    let mut folded: Vec<(Role, String)> = Vec::new();
    for (idx, m) in rest.iter().enumerate() {
        let mut content = lstrip_nl_rstrip(&m.content).to_string();
        match m.role {
            Role::Function | Role::Tool => {
                match folded.last_mut() {
                    Some((Role::Assistant, last)) => {
                        last.push_str("\nObservation: ");
                        last.push_str(&content);
                        if idx == rest.len() - 1 {
                            // A prefix for the model to continue.
                            last.push_str("\nThought:");
                        }
                    }
                    _ => {
                        return Err(invalid(format!(
                            "expecting an assistant message (with a function call) before the \
                             {} message at position {}",
                            m.role.as_str(),
                            idx + messages.len() - rest.len()
                        )))
                    }
                }
            }
            Role::Assistant => {
                if folded.is_empty() {
                    return Err(invalid(
                        "expecting a user message before the first assistant message",
                    ));
                }
                match m.tool_calls.as_slice() {
                    [] => {
                        if !functions.is_empty() {
                            content = format!(
                                "Thought: I now know the final answer.\nFinal Answer: {content}"
                            );
                        }
                    }
                    [call] => {
                        if !content.starts_with("Thought:") {
                            content = format!("Thought: {content}");
                        }
                        content = format!(
                            "{content}\nAction: {}\nAction Input: {}",
                            call.name, call.arguments
                        );
                    }
                    calls => {
                        return Err(invalid(format!(
                            "the ReAct format carries one function call per assistant message, \
                             got {}",
                            calls.len()
                        )))
                    }
                }
                match folded.last_mut() {
                    Some((Role::User, _)) => {
                        folded.push((Role::Assistant, lstrip_nl_rstrip(&content).to_string()))
                    }
                    Some((_, last)) => {
                        last.push('\n');
                        last.push_str(&content);
                    }
                    None => unreachable!("checked above"),
                }
            }
            Role::User => folded.push((Role::User, content)),
            Role::System => {
                return Err(invalid(
                    "a system message is only allowed as the first message",
                ))
            }
        }
    }

    let query = match folded.last() {
        Some((Role::User, _)) => folded.pop().map(|(_, q)| q),
        _ => None,
    };
    if !folded.len().is_multiple_of(2) {
        return Err(invalid(
            "expecting user and assistant messages to alternate (two user messages in a row?)",
        ));
    }
    let mut history = Vec::with_capacity(folded.len() / 2);
    let n = folded.len();
    for (i, pair) in folded.chunks(2).enumerate() {
        match pair {
            [(Role::User, u), (Role::Assistant, a)] => {
                let mut user = lstrip_nl_rstrip(u).to_string();
                let assistant = lstrip_nl_rstrip(a).to_string();
                if !instruction.is_empty() && 2 * i == n - 2 {
                    user = format!("{instruction}\n\nQuestion: {user}");
                    instruction.clear();
                }
                history.push(Turn { user, assistant });
            }
            _ => {
                return Err(invalid(
                    "expecting exactly one user (or function) message before every assistant \
                     message",
                ))
            }
        }
    }
    let query = match (query, instruction.is_empty()) {
        (Some(q), false) => Some(format!("{instruction}\n\nQuestion: {q}")),
        (q, true) => q,
        (None, false) => unreachable!("a conversation without a final question has a history turn"),
    };
    Ok(ReactQuery {
        system: system.to_string(),
        history,
        query,
    })
}

/// `text_complete_last_message`'s prompt: the ChatML conversation with its last assistant turn
/// left open (no `<|im_end|>`), for the model to continue.
pub fn continuation_prompt(system: &str, history: &[Turn]) -> PromptPieces {
    let mut p = PromptPieces::default();
    p.template("<|im_start|>system\n");
    p.content(system);
    p.template("<|im_end|>");
    for t in history {
        p.template("\n<|im_start|>user\n");
        p.content(lstrip_nl_rstrip(&t.user));
        p.template("<|im_end|>\n<|im_start|>assistant\n");
        p.content(lstrip_nl_rstrip(&t.assistant));
        p.template("<|im_end|>");
    }
    let stripped = p.strip_template_suffix("<|im_end|>");
    debug_assert!(stripped);
    p
}

/// Python's slice `s[a:b]` for byte offsets on character boundaries: empty when `a >= b`.
fn slice(s: &str, a: usize, b: usize) -> &str {
    if a >= b {
        ""
    } else {
        &s[a..b.min(s.len())]
    }
}

/// Python's `s.find(pat)` as an `isize` (-1 when absent).
fn find(s: &str, pat: &str) -> isize {
    s.find(pat).map_or(-1, |i| i as isize)
}

/// The reference's `parse_response`, quirks included: the first `\nAction:` before the first
/// `\nAction Input:` makes a call (up to `\nObservation:`, added back when the stop word cut
/// it); its content is what follows the first `Thought: ` before the action. Without a call,
/// the content is what follows the last `\nFinal Answer: `, or the whole text.
pub fn parse_response(response: &str) -> ParsedReply {
    const ACTION: &str = "\nAction:";
    const INPUT: &str = "\nAction Input:";
    const OBS: &str = "\nObservation:";
    const FINAL: &str = "\nFinal Answer: ";
    let mut response = response.to_string();
    let mut func_name = String::new();
    let mut func_args = String::new();
    let i = find(&response, ACTION);
    let j = find(&response, INPUT);
    let k = find(&response, OBS);
    if 0 <= i && i < j {
        if k < j {
            // The stop word was dropped from the output: add it back.
            response = format!("{}{OBS}", response.trim_end_matches(super::is_py_space));
        }
        let k = find(&response, OBS);
        let (i, j) = (i as usize, j as usize);
        func_name = py_strip(slice(&response, i + ACTION.len(), j)).to_string();
        // `k` can only be -1 here if the text had an Observation the trim removed (never);
        // a `k` before `j` gives Python's empty slice.
        let k = if k < 0 { response.len() } else { k as usize };
        func_args = py_strip(slice(&response, j + INPUT.len(), k)).to_string();
    }
    if !func_name.is_empty() {
        let mut content = &response[..i as usize];
        if let Some(t) = content.find("Thought: ") {
            content = &content[t + "Thought: ".len()..];
        }
        return ParsedReply {
            content: py_strip(content).to_string(),
            tool_calls: vec![ToolCall::new(func_name, func_args)],
            finish: FinishKind::ToolCalls,
        };
    }
    let content = match response.rfind(FINAL) {
        Some(z) => &response[z + FINAL.len()..],
        None => &response[..],
    };
    ParsedReply::text(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(content: &str, name: &str, args: &str) -> ParsedReply {
        ParsedReply {
            content: content.into(),
            tool_calls: vec![ToolCall::new(name, args)],
            finish: FinishKind::ToolCalls,
        }
    }

    // Expected values worked out by hand from `parse_response` in `openai_api.py`.
    #[test]
    fn parse_response_cases() {
        assert_eq!(
            parse_response("Thought: I need the weather.\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}"),
            call("I need the weather.", "get_weather", "{\"city\": \"Paris\"}")
        );
        // With the stop word still there, and text after it.
        assert_eq!(
            parse_response(
                "Thought: x\nAction: f \nAction Input:  {}  \nObservation: 1\nThought: y"
            ),
            call("x", "f", "{}")
        );
        // No "Thought: ": the content is everything before the action.
        assert_eq!(
            parse_response("Let me see\nAction: f\nAction Input: 1"),
            call("Let me see", "f", "1")
        );
        // The first `Thought: ` wins.
        assert_eq!(
            parse_response("Thought: a Thought: b\nAction: f\nAction Input: 1"),
            call("a Thought: b", "f", "1")
        );
        // An Observation before the Action Input: the name runs up to the Action Input and
        // the arguments are Python's empty slice.
        assert_eq!(
            parse_response("Thought: t\nAction: f\nObservation: o\nAction Input: 1"),
            call("t", "f\nObservation: o", "")
        );
        // Final answers: after the last "\nFinal Answer: ", not stripped.
        assert_eq!(
            parse_response("Thought: I now know the final answer\nFinal Answer: 42 "),
            ParsedReply::text("42 ")
        );
        assert_eq!(
            parse_response("Final Answer: a\nFinal Answer: b"),
            ParsedReply::text("b")
        );
        // A text that starts with "Final Answer: " has no newline before it: kept whole.
        assert_eq!(
            parse_response("Final Answer: a"),
            ParsedReply::text("Final Answer: a")
        );
        assert_eq!(parse_response("Hello!"), ParsedReply::text("Hello!"));
        assert_eq!(parse_response(""), ParsedReply::text(""));
        // An empty action name is no call, but the reference has already added the stop word
        // back to the text it then returns.
        assert_eq!(
            parse_response("Thought: t\nAction: \nAction Input: 1  "),
            ParsedReply::text("Thought: t\nAction: \nAction Input: 1\nObservation:")
        );
        // Action Input before Action: no call.
        assert_eq!(
            parse_response("\nAction Input: 1\nAction: f"),
            ParsedReply::text("\nAction Input: 1\nAction: f")
        );
        // Multi-byte text around the markers.
        assert_eq!(
            parse_response("Thought: 我应该使用通义万相API来生成一张五彩斑斓的黑的图片。\nAction: image_gen\nAction Input: {\"query\": \"五彩斑斓的黑\"}"),
            call(
                "我应该使用通义万相API来生成一张五彩斑斓的黑的图片。",
                "image_gen",
                "{\"query\": \"五彩斑斓的黑\"}"
            )
        );
    }

    fn f2() -> Vec<FunctionSpec> {
        vec![
            FunctionSpec::new("a", "A.", serde_json::json!({})),
            FunctionSpec::new("b", "B.", serde_json::json!([])),
        ]
    }

    #[test]
    fn instruction_goes_to_the_last_question() {
        let f = f2();
        let instr = instruction(&f);
        assert!(instr.starts_with("Answer the following questions"));
        assert!(instr.contains("a: Call this tool to interact with the a API. What is the a API useful for? A. Parameters: {}\n\nb: Call"));
        assert!(instr.contains("should be one of [a, b]\n"));
        assert!(instr.ends_with("Begin!"));

        // Ends with a user message: the query carries the instruction.
        let q = parse_messages(&[ChatMessage::user("\n q1 \n")], &f).unwrap();
        assert_eq!(q.system, DEFAULT_SYSTEM_PROMPT);
        assert_eq!(q.query.unwrap(), format!("{instr}\n\nQuestion:  q1"));
        assert!(q.history.is_empty());

        // A later question: the instruction stays on the last history turn, not the query.
        let q = parse_messages(
            &[
                ChatMessage::system("\nS \n"),
                ChatMessage::user("q1"),
                ChatMessage::assistant("a1"),
                ChatMessage::user("q2"),
            ],
            &f,
        )
        .unwrap();
        assert_eq!(q.system, "S");
        assert_eq!(q.query.as_deref(), Some("q2"));
        assert_eq!(
            q.history,
            vec![Turn {
                user: format!("{instr}\n\nQuestion: q1"),
                assistant: "Thought: I now know the final answer.\nFinal Answer: a1".into()
            }]
        );
    }

    #[test]
    fn calls_and_results_fold_into_the_assistant_turn() {
        let f = f2();
        let msgs = [
            ChatMessage::user("q"),
            ChatMessage::assistant_calls("", vec![ToolCall::new("a", "{\"x\": 1}")]),
            ChatMessage::function("a", " 7 \n"),
            ChatMessage::assistant_calls("Thought: more", vec![ToolCall::new("b", "2")]),
            ChatMessage::tool(Some("id".into()), "8"),
        ];
        let q = parse_messages(&msgs, &f).unwrap();
        assert_eq!(q.query, None);
        assert_eq!(q.history.len(), 1);
        assert_eq!(
            q.history[0].assistant,
            "Thought: \nAction: a\nAction Input: {\"x\": 1}\nObservation:  7\nThought: more\n\
             Action: b\nAction Input: 2\nObservation: 8\nThought:"
        );
        assert!(q.history[0].user.ends_with("Begin!\n\nQuestion: q"));

        // Without functions the history is plain, but calls still render as actions.
        let q = parse_messages(&msgs[..3], &[]).unwrap();
        assert_eq!(q.history[0].user, "q");
        assert_eq!(
            q.history[0].assistant,
            "Thought: \nAction: a\nAction Input: {\"x\": 1}\nObservation:  7\nThought:"
        );
    }

    #[test]
    fn rejected_like_the_reference() {
        let f = f2();
        let u = || ChatMessage::user("q");
        let a = || ChatMessage::assistant("a");
        let r = || ChatMessage::function("a", "r");
        let two = ChatMessage::assistant_calls(
            "",
            vec![ToolCall::new("a", "{}"), ToolCall::new("b", "{}")],
        );
        for (msgs, what) in [
            (vec![], "no messages"),
            (vec![ChatMessage::system("s")], "at least one user"),
            (vec![a(), u()], "before the first assistant"),
            (vec![r(), u()], "before the function"),
            (vec![u(), r()], "before the function"),
            (vec![u(), ChatMessage::system("s")], "first message"),
            (vec![u(), u()], "alternate"),
            (vec![u(), two], "one function call"),
        ] {
            let e = parse_messages(&msgs, &f).unwrap_err().to_string();
            assert!(e.contains(what), "{msgs:?}: {e}");
        }
    }

    #[test]
    fn continuation_leaves_the_last_turn_open() {
        let p = continuation_prompt(
            "sys",
            &[
                Turn {
                    user: "u1".into(),
                    assistant: "a1".into(),
                },
                Turn {
                    user: "u2".into(),
                    assistant: "a2\nThought:".into(),
                },
            ],
        );
        assert_eq!(
            p.text(),
            "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n\
             <|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n\
             <|im_start|>assistant\na2\nThought:"
        );
    }
}
