//! The canonical formatter: one layout for every policy, comments kept, idempotent.
//!
//! Layout: two-space indentation; one declaration, setting or statement per line; a blank line
//! between top-level declarations except between consecutive one-line `use`, derived `metric`
//! and `on` declarations of the same kind. Comments stay before the node they preceded, and a
//! comment at the end of a line stays there.

use crate::ast::*;

struct Formatter<'a> {
    out: String,
    comments: &'a [Comment],
    next_comment: usize,
    src: &'a str,
}

/// Formats a parsed file. `src` must be the text it was parsed from (comments are placed by
/// their positions in it).
pub fn format(file: &File, src: &str) -> String {
    let mut f = Formatter {
        out: String::new(),
        comments: &file.comments,
        next_comment: 0,
        src,
    };
    f.rollout(&file.rollout);
    // Comments after the closing brace.
    f.leading(usize::MAX, 0);
    f.out
}

fn ind(level: usize) -> String {
    "  ".repeat(level)
}

impl Formatter<'_> {
    /// Emits every comment that starts before `pos`, each on its own line.
    fn leading(&mut self, pos: usize, level: usize) {
        while let Some(c) = self.comments.get(self.next_comment) {
            if c.span.start >= pos {
                break;
            }
            self.out.push_str(&ind(level));
            self.out.push_str(&c.text);
            self.out.push('\n');
            self.next_comment += 1;
        }
    }

    /// Ends a line for a node ending at `end`: comments inside the node and a comment on the
    /// same source line after it are kept on that line.
    fn end_line(&mut self, end: usize, level: usize) {
        let mut trailing: Vec<&str> = Vec::new();
        while let Some(c) = self.comments.get(self.next_comment) {
            let inside = c.span.start < end;
            let same_line = c.span.start >= end
                && !self
                    .src
                    .get(end..c.span.start)
                    .unwrap_or("\n")
                    .contains('\n');
            if inside || same_line {
                trailing.push(&c.text);
                self.next_comment += 1;
                if same_line {
                    break;
                }
            } else {
                break;
            }
        }
        // One comment may trail the line; any others (a comment ends the line) follow on lines
        // of their own, in order.
        let mut rest = trailing.into_iter();
        if let Some(first) = rest.next() {
            self.out.push_str("  ");
            self.out.push_str(first);
        }
        self.out.push('\n');
        for t in rest {
            self.out.push_str(&ind(level));
            self.out.push_str(t);
            self.out.push('\n');
        }
    }

    fn line(&mut self, level: usize, start: usize, end: usize, text: &str) {
        self.leading(start, level);
        self.out.push_str(&ind(level));
        self.out.push_str(text);
        self.end_line(end, level);
    }

    fn open(&mut self, level: usize, start: usize, header: &str) {
        self.leading(start, level);
        self.out.push_str(&ind(level));
        self.out.push_str(header);
        self.out.push_str(" {\n");
    }

    fn close(&mut self, level: usize, end: usize) {
        // Comments before the closing brace belong inside the block.
        self.leading(end.saturating_sub(1), level + 1);
        self.out.push_str(&ind(level));
        self.out.push('}');
        self.end_line(end, level);
    }

    fn rollout(&mut self, r: &Rollout) {
        self.open(0, r.span.start, &format!("rollout {}", string(&r.name)));
        let mut prev: Option<&Item> = None;
        for item in &r.items {
            if let Some(p) = prev
                && !grouped(p, item)
            {
                self.out.push('\n');
            }
            self.item(item, 1);
            prev = Some(item);
        }
        self.close(0, r.span.end);
    }

    fn item(&mut self, item: &Item, level: usize) {
        match item {
            Item::Block(b) => {
                self.open(level, b.span.start, b.kind.keyword());
                for s in &b.settings {
                    self.setting(s, level + 1);
                }
                self.close(level, b.span.end);
            }
            Item::Use(u) => self.line(
                level,
                u.span.start,
                u.span.end,
                &format!("use {}", u.preset.name),
            ),
            Item::Metric(m) => match &m.def {
                MetricDef::Derived(e) => self.line(
                    level,
                    m.span.start,
                    m.span.end,
                    &format!("metric {} = {}", m.name.name, expr(e)),
                ),
                MetricDef::Query(settings) => {
                    self.open(level, m.span.start, &format!("metric {}", m.name.name));
                    for s in settings {
                        self.setting(s, level + 1);
                    }
                    self.close(level, m.span.end);
                }
            },
            Item::Rule(r) => self.rule(r, level),
            Item::On(o) => {
                let resp = match &o.response {
                    OnResponse::Act(a) => a.action.keyword().to_string(),
                    OnResponse::Hold { limit: None, .. } => "hold".to_string(),
                    OnResponse::Hold {
                        limit: Some((d, a)),
                        ..
                    } => format!("hold {} then {}", d.text(), a.action.keyword()),
                };
                self.line(
                    level,
                    o.span.start,
                    o.span.end,
                    &format!("on {} {}", o.kind.keyword(), resp),
                );
            }
            Item::Steps(s) => {
                self.open(level, s.span.start, "steps");
                for step in &s.steps {
                    self.step(step, level + 1);
                }
                self.close(level, s.span.end);
            }
        }
    }

    fn setting(&mut self, s: &Setting, level: usize) {
        let v = match &s.value {
            Value::Str(st) => string(st),
            Value::Quantity(q) => q.text(),
            Value::Bool(b, _) => b.to_string(),
            Value::Ident(i) => i.name.clone(),
        };
        self.line(
            level,
            s.span.start,
            s.span.end,
            &format!("{} = {}", s.key.name, v),
        );
    }

    fn rule(&mut self, r: &RuleDecl, level: usize) {
        let header = match &r.name {
            Some(n) => format!("rule {}", n.name),
            None => "rule".to_string(),
        };
        self.open(level, r.span.start, &header);
        for st in &r.stmts {
            let text = match st {
                RuleStmt::When {
                    cond,
                    confidence,
                    detect,
                    ..
                } => match (confidence, detect) {
                    (Some(c), Some(d)) => format!(
                        "when {} with confidence {} detect {}",
                        expr(cond),
                        c.text(),
                        d.text()
                    ),
                    (Some(c), None) => format!("when {} with confidence {}", expr(cond), c.text()),
                    _ => format!("when {}", expr(cond)),
                },
                RuleStmt::For(q, _) => format!("for {}", q.text()),
                RuleStmt::Failures { count, mode, .. } => match mode {
                    Some(FailureMode::Consecutive) => {
                        format!("failures {} consecutive", count.text())
                    }
                    Some(FailureMode::Total) => format!("failures {} total", count.text()),
                    None => format!("failures {}", count.text()),
                },
                RuleStmt::Require(e, _) => format!("require {}", expr(e)),
                RuleStmt::Action(a, _) => format!("action {}", a.action.keyword()),
                RuleStmt::Window(q, _) => format!("window {}", q.text()),
            };
            let sp = st.span();
            self.line(level + 1, sp.start, sp.end, &text);
        }
        self.close(level, r.span.end);
    }

    fn step(&mut self, step: &Step, level: usize) {
        let sp = step.span();
        match step {
            Step::Traffic(q, _) => {
                self.line(level, sp.start, sp.end, &format!("traffic {}", q.text()))
            }
            Step::Promote(_) => self.line(level, sp.start, sp.end, "promote"),
            Step::Approval { max, .. } => {
                let text = match max {
                    None => "approval".to_string(),
                    Some((d, None)) => format!("approval max {}", d.text()),
                    Some((d, Some(a))) => {
                        format!("approval max {} else {}", d.text(), a.action.keyword())
                    }
                };
                self.line(level, sp.start, sp.end, &text);
            }
            Step::Hold(h) => {
                let mut text = "hold".to_string();
                if let Some(d) = &h.duration {
                    text.push(' ');
                    text.push_str(&d.text());
                }
                if let Some(u) = &h.until {
                    text.push_str(&format!(" until {} max {}", expr(&u.cond), u.max.text()));
                    if let Some(a) = &u.otherwise {
                        text.push_str(&format!(" else {}", a.action.keyword()));
                    }
                }
                if h.overrides.is_empty() {
                    self.line(level, sp.start, sp.end, &text);
                } else {
                    self.open(level, sp.start, &text);
                    for r in &h.overrides {
                        self.rule(r, level + 1);
                    }
                    self.close(level, sp.end);
                }
            }
        }
    }
}

/// Whether two consecutive top-level items stay together without a blank line.
fn grouped(a: &Item, b: &Item) -> bool {
    matches!(
        (a, b),
        (Item::Use(_), Item::Use(_))
            | (Item::On(_), Item::On(_))
            | (
                Item::Metric(MetricDecl {
                    def: MetricDef::Derived(_),
                    ..
                }),
                Item::Metric(MetricDecl {
                    def: MetricDef::Derived(_),
                    ..
                })
            )
    )
}

/// Canonical string literal: raw strings stay raw, others are re-escaped.
pub(crate) fn string(s: &StrLit) -> String {
    if s.raw {
        return format!("\"\"\"{}\"\"\"", s.value);
    }
    let mut out = String::with_capacity(s.value.len() + 2);
    out.push('"');
    for c in s.value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An expression on one line, with the author's parentheses.
pub(crate) fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number(q) => q.text(),
        ExprKind::Path(p) => p
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join("."),
        ExprKind::Unary(UnaryOp::Neg, x) => format!("-{}", expr(x)),
        ExprKind::Unary(UnaryOp::Not, x) => format!("not {}", expr(x)),
        ExprKind::Binary(op, a, b) => format!("{} {} {}", expr(a), op.as_str(), expr(b)),
        ExprKind::Paren(x) => format!("({})", expr(x)),
    }
}
