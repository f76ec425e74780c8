//! `eventflow trace`: the events of one correlation id as their causation tree.
//!
//! An event's parent is the event its `causation_id` names, when that event is among them;
//! the others are roots. Siblings keep the order the events were given in (global order).

use std::collections::HashMap;
use std::fmt::Write as _;

use eventflow::Event;

use crate::output::time;

/// The causation forest of `events` (in global order): for each event, the indexes of its
/// children, and the roots.
struct Forest<'a> {
    events: &'a [Event],
    children: Vec<Vec<usize>>,
    roots: Vec<usize>,
}

impl<'a> Forest<'a> {
    fn new(events: &'a [Event]) -> Self {
        let index: HashMap<String, usize> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.to_string(), i))
            .collect();
        let mut children = vec![Vec::new(); events.len()];
        let mut roots = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match event
                .causation_id
                .as_ref()
                .and_then(|c| index.get(c))
                .filter(|&&p| p != i)
            {
                Some(&parent) => children[parent].push(i),
                None => roots.push(i),
            }
        }
        // A cycle of causation ids (never written by eventflow itself) would leave events
        // unreachable from any root: show them as roots rather than lose them.
        let mut seen = vec![false; events.len()];
        let mut stack = roots.clone();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(&children[i]);
            }
        }
        for (i, seen) in seen.iter().enumerate() {
            if !seen {
                roots.push(i);
                for list in &mut children {
                    list.retain(|&c| c != i);
                }
            }
        }
        Forest {
            events,
            children,
            roots,
        }
    }
}

/// One line of the tree: type, source, stream and version, time.
fn label(event: &Event) -> String {
    let stream = match (&event.stream_id, event.stream_version) {
        (Some(s), Some(v)) => format!("{s} v{v}"),
        (Some(s), None) => s.clone(),
        _ => "-".to_owned(),
    };
    format!(
        "{}  [{}]  {}  {}",
        event.event_type,
        event.source.as_deref().unwrap_or("-"),
        stream,
        time(&event.timestamp)
    )
}

/// The tree drawn with box characters, one event per line.
pub fn tree(events: &[Event]) -> String {
    fn draw(forest: &Forest<'_>, i: usize, prefix: &str, last: bool, out: &mut String) {
        let (branch, next) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let _ = writeln!(out, "{prefix}{branch}{}", label(&forest.events[i]));
        let prefix = format!("{prefix}{next}");
        let kids = &forest.children[i];
        for (n, &c) in kids.iter().enumerate() {
            draw(forest, c, &prefix, n + 1 == kids.len(), out);
        }
    }
    let forest = Forest::new(events);
    let mut out = String::new();
    for &root in &forest.roots {
        let _ = writeln!(out, "{}", label(&events[root]));
        let kids = &forest.children[root];
        for (n, &c) in kids.iter().enumerate() {
            draw(&forest, c, "", n + 1 == kids.len(), &mut out);
        }
    }
    out
}

/// Node ids `e1`, `e2`, ... in global order, so diagrams are stable.
fn node(i: usize) -> String {
    format!("e{}", i + 1)
}

/// A Mermaid flowchart: one node per event, an arrow from cause to effect.
pub fn mermaid(events: &[Event]) -> String {
    let forest = Forest::new(events);
    let mut out = String::from("flowchart TD\n");
    for (i, e) in events.iter().enumerate() {
        let text = format!(
            "{}<br/>{} · {}",
            e.event_type,
            e.source.as_deref().unwrap_or("-"),
            e.stream_id.as_deref().unwrap_or("-")
        )
        .replace('"', "#quot;");
        let _ = writeln!(out, "    {}[\"{text}\"]", node(i));
    }
    for (parent, kids) in forest.children.iter().enumerate() {
        for &c in kids {
            let _ = writeln!(out, "    {} --> {}", node(parent), node(c));
        }
    }
    out
}

/// A Graphviz digraph: one node per event, an edge from cause to effect.
pub fn dot(events: &[Event]) -> String {
    let forest = Forest::new(events);
    let mut out = String::from("digraph trace {\n    node [shape=box];\n");
    for (i, e) in events.iter().enumerate() {
        let text = format!(
            "{}\\n{} · {}",
            e.event_type,
            e.source.as_deref().unwrap_or("-"),
            e.stream_id.as_deref().unwrap_or("-")
        )
        .replace('"', "\\\"");
        let _ = writeln!(out, "    {} [label=\"{text}\"];", node(i));
    }
    for (parent, kids) in forest.children.iter().enumerate() {
        for &c in kids {
            let _ = writeln!(out, "    {} -> {};", node(parent), node(c));
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(t: &str, parent: Option<&Event>) -> Event {
        let e = Event::new(t, json!({})).unwrap().with_source("s");
        match parent {
            Some(p) => e.caused_by(p),
            None => e,
        }
    }

    #[test]
    fn children_nest_under_their_cause_in_order() {
        let a = ev("a", None);
        let b = ev("b", Some(&a));
        let c = ev("c", Some(&b));
        let d = ev("d", Some(&b));
        let drawn = tree(&[a, b, c, d]);
        let types: Vec<&str> = drawn
            .lines()
            .map(|l| l.split("  [").next().unwrap())
            .collect();
        assert_eq!(types, ["a", "└─ b", "   ├─ c", "   └─ d"]);
    }

    #[test]
    fn a_cycle_loses_no_event() {
        let mut a = ev("a", None);
        let b = ev("b", Some(&a));
        a.causation_id = Some(b.id.to_string());
        assert_eq!(tree(&[a, b]).lines().count(), 2);
    }
}
