//! Server-sent events in OpenAI's streaming format: each chunk is a `data: {json}` line and a
//! blank line; the stream ends with `data: [DONE]`. [`SseStream`] turns a request's engine
//! events into such frames as they arrive; dropping it (the client went away) drops the event
//! receiver, which frees the request's slot.

use super::scheduler::Event;
use futures_core::Stream;
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc::UnboundedReceiver;

/// One SSE frame carrying `json`.
pub fn frame(json: &Value) -> String {
    format!("data: {json}\n\n")
}

/// The frame that ends an OpenAI stream.
pub const DONE: &str = "data: [DONE]\n\n";

/// Turns each engine event into frames; returns true after the last event (the stream then
/// sends [`DONE`] and ends).
pub type Translate = Box<dyn FnMut(Event, &mut Vec<String>) -> bool + Send>;

pub struct SseStream {
    rx: UnboundedReceiver<Event>,
    translate: Translate,
    pending: VecDeque<String>,
    scratch: Vec<String>,
    finished: bool,
}

impl SseStream {
    /// `first` frames go out before any event (the chunk that carries the role).
    pub fn new(rx: UnboundedReceiver<Event>, first: Vec<String>, translate: Translate) -> Self {
        SseStream {
            rx,
            translate,
            pending: first.into(),
            scratch: Vec::new(),
            finished: false,
        }
    }
}

impl Stream for SseStream {
    type Item = Result<String, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(f) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(f)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            // Send what has accumulated as one write: several events may be waiting.
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(ev)) => {
                    this.scratch.clear();
                    let last = (this.translate)(ev, &mut this.scratch);
                    this.pending.extend(this.scratch.drain(..));
                    if last {
                        this.pending.push_back(DONE.to_string());
                        this.finished = true;
                    }
                }
                Poll::Ready(None) => {
                    // The engine always ends a request with Done or Error; a closed channel
                    // without one means it is gone.
                    let err = super::api::ApiError::internal("the engine stopped");
                    this.pending.push_back(frame(&err.to_json()));
                    this.pending.push_back(DONE.to_string());
                    this.finished = true;
                }
            }
        }
    }
}
