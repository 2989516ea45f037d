//! From pest pairs to the AST. Shape mismatches are grammar bugs and are reported as internal
//! syntax errors rather than panics; user mistakes that the grammar accepts on purpose
//! (compatibility spellings, unknown units, bad escapes) become coded diagnostics here.

use pest::iterators::Pair;
use rollout_diagnostics::{Code, Diagnostic, Span};

use crate::ast::*;
use crate::parser::Rule;
use crate::scan::{MAX_DEPTH, nesting_error};

pub(crate) struct Lowerer<'t> {
    pub errors: Vec<Diagnostic>,
    /// The source text.
    pub text: &'t str,
    /// Comment end offset -> start offset, to trim trailing comments off node spans.
    pub comment_ends: std::collections::HashMap<usize, usize>,
}

type P<'i> = Pair<'i, Rule>;

fn span(p: &P<'_>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

impl Lowerer<'_> {
    /// The span of a pair without the whitespace and comments pest's implicit skipping may
    /// have consumed after its last token (a rule ending in an optional part does that).
    fn span(&self, p: &P<'_>) -> Span {
        let raw = span(p);
        let mut end = raw.end;
        loop {
            let trimmed = self.text[raw.start..end].trim_end().len() + raw.start;
            end = trimmed;
            match self.comment_ends.get(&end) {
                Some(&start) if start >= raw.start => end = start,
                _ => break,
            }
        }
        Span::new(raw.start, end)
    }

    fn internal(&mut self, p: &P<'_>, what: &str) {
        self.errors.push(Diagnostic::new(
            Code::Syntax,
            format!(
                "internal parser error: unexpected {:?} while reading {what}",
                p.as_rule()
            ),
            span(p),
            "here",
        ));
    }

    pub(crate) fn file(&mut self, file: P<'_>) -> Option<Rollout> {
        let rollout = file.into_inner().find(|p| p.as_rule() == Rule::rollout)?;
        let sp = self.span(&rollout);
        let mut inner = rollout.into_inner();
        inner.next(); // kw_rollout
        let name = self.string(inner.next()?);
        let mut items = Vec::new();
        for p in inner {
            if let Some(item) = self.item(p) {
                items.push(item);
            }
        }
        Some(Rollout {
            name,
            items,
            span: sp,
        })
    }

    fn item(&mut self, p: P<'_>) -> Option<Item> {
        let sp = self.span(&p);
        Some(match p.as_rule() {
            Rule::settings_block => {
                let mut inner = p.into_inner();
                let kw = inner.next()?;
                let keyword_span = self.span(&kw);
                let kind = match kw.into_inner().next()?.as_rule() {
                    Rule::kw_target => BlockKind::Target,
                    Rule::kw_prometheus => BlockKind::Prometheus,
                    _ => BlockKind::Evaluation,
                };
                let settings = inner.filter_map(|s| self.setting(s)).collect();
                Item::Block(SettingsBlock {
                    kind,
                    keyword_span,
                    settings,
                    span: sp,
                })
            }
            Rule::use_decl => {
                let preset = ident(p.into_inner().nth(1)?);
                Item::Use(UseDecl { preset, span: sp })
            }
            Rule::metric_decl => {
                let mut inner = p.into_inner();
                inner.next();
                let name = ident(inner.next()?);
                let body = inner.next()?;
                let def = match body.as_rule() {
                    Rule::metric_query => MetricDef::Query(
                        body.into_inner().filter_map(|s| self.setting(s)).collect(),
                    ),
                    _ => MetricDef::Derived(self.expr(body.into_inner().next()?, 0)?),
                };
                Item::Metric(MetricDecl {
                    name,
                    def,
                    span: sp,
                })
            }
            Rule::rule_decl => Item::Rule(self.rule(p)?),
            Rule::on_decl => {
                let mut inner = p.into_inner();
                inner.next();
                let kind_pair = inner.next()?;
                let kind_span = self.span(&kind_pair);
                let kind = match kind_pair.into_inner().next()?.as_rule() {
                    Rule::kw_no_data => FailureKind::NoData,
                    Rule::kw_stale_data => FailureKind::StaleData,
                    Rule::kw_query_error => FailureKind::QueryError,
                    _ => FailureKind::Inconclusive,
                };
                let resp = inner.next()?.into_inner().next()?;
                let response = match resp.as_rule() {
                    Rule::action => OnResponse::Act(action(resp)?),
                    _ => {
                        let hsp = self.span(&resp);
                        let mut h = resp.into_inner();
                        h.next(); // kw_hold
                        let limit = match (h.next(), h.next(), h.next()) {
                            (Some(d), Some(_then), Some(a)) => {
                                Some((self.quantity(d)?, action(a)?))
                            }
                            _ => None,
                        };
                        OnResponse::Hold { limit, span: hsp }
                    }
                };
                Item::On(OnDecl {
                    kind,
                    kind_span,
                    response,
                    span: sp,
                })
            }
            Rule::steps_decl => {
                let mut inner = p.into_inner();
                let keyword_span = self.span(&inner.next()?);
                let steps = inner.filter_map(|s| self.step(s)).collect();
                Item::Steps(StepsDecl {
                    steps,
                    keyword_span,
                    span: sp,
                })
            }
            Rule::compat_item => {
                let kw = p
                    .into_inner()
                    .next()
                    .map(|k| k.as_str().to_string())
                    .unwrap_or_default();
                let help = match kw.as_str() {
                    "analysis" | "successCondition" | "failureCondition" => {
                        "this looks like Argo Rollouts; write checks as `rule <Name> { when <breach> action rollback }`"
                    }
                    "thresholdRange" => {
                        "this looks like Flagger; write `rule { when canary.<metric> > <limit> }`"
                    }
                    _ => {
                        "declare `target`, `prometheus`, `metric`, `rule`, `on` and `steps` inside `rollout { }`"
                    }
                };
                self.errors.push(
                    Diagnostic::new(
                        Code::ForeignSyntax,
                        format!("`{kw}` is not a rolloutctl declaration"),
                        sp,
                        "not rolloutctl syntax",
                    )
                    .with_help(help),
                );
                return None;
            }
            _ => {
                self.internal(&p, "a declaration");
                return None;
            }
        })
    }

    fn setting(&mut self, p: P<'_>) -> Option<Setting> {
        let sp = self.span(&p);
        let mut inner = p.into_inner();
        let key = ident(inner.next()?);
        let v = inner.next()?.into_inner().next()?;
        let value = match v.as_rule() {
            Rule::string => Value::Str(self.string(v)),
            Rule::quantity | Rule::compat_spaced_unit => Value::Quantity(self.quantity(v)?),
            Rule::boolean => Value::Bool(v.as_str() == "true", self.span(&v)),
            Rule::ident => Value::Ident(ident(v)),
            _ => {
                self.internal(&v, "a value");
                return None;
            }
        };
        Some(Setting {
            key,
            value,
            span: sp,
        })
    }

    fn rule(&mut self, p: P<'_>) -> Option<RuleDecl> {
        let sp = self.span(&p);
        let mut name = None;
        let mut stmts = Vec::new();
        for s in p.into_inner() {
            let ssp = self.span(&s);
            match s.as_rule() {
                Rule::kw_rule => {}
                Rule::ident => name = Some(ident(s)),
                Rule::when_stmt => {
                    let mut inner = s.into_inner();
                    inner.next();
                    let Some(cond) = inner.next().and_then(|e| self.expr(e, 0)) else {
                        continue;
                    };
                    let (confidence, detect) = match inner.next() {
                        Some(c) => {
                            let mut parts = c.into_inner().skip(2);
                            let confidence = parts.next().and_then(|q| self.quantity(q));
                            let detect = parts
                                .next()
                                .and_then(|d| d.into_inner().nth(1))
                                .and_then(|q| self.quantity(q));
                            (confidence, detect)
                        }
                        None => (None, None),
                    };
                    stmts.push(RuleStmt::When {
                        cond,
                        confidence,
                        detect,
                        span: ssp,
                    });
                }
                Rule::for_stmt => {
                    if let Some(q) = s.into_inner().nth(1).and_then(|q| self.quantity(q)) {
                        stmts.push(RuleStmt::For(q, ssp));
                    }
                }
                Rule::window_stmt => {
                    if let Some(q) = s.into_inner().nth(1).and_then(|q| self.quantity(q)) {
                        stmts.push(RuleStmt::Window(q, ssp));
                    }
                }
                Rule::failures_stmt => {
                    let mut inner = s.into_inner();
                    inner.next();
                    let Some(count) = inner.next().and_then(|q| self.quantity(q)) else {
                        continue;
                    };
                    let mode = inner.next().and_then(|m| m.into_inner().next()).map(|m| {
                        if m.as_rule() == Rule::kw_total {
                            FailureMode::Total
                        } else {
                            FailureMode::Consecutive
                        }
                    });
                    stmts.push(RuleStmt::Failures {
                        count,
                        mode,
                        span: ssp,
                    });
                }
                Rule::require_stmt => {
                    if let Some(e) = s.into_inner().nth(1).and_then(|e| self.expr(e, 0)) {
                        stmts.push(RuleStmt::Require(e, ssp));
                    }
                }
                Rule::action_stmt => {
                    if let Some(a) = s.into_inner().nth(1).and_then(action) {
                        stmts.push(RuleStmt::Action(a, ssp));
                    }
                }
                _ => self.internal(&s, "a rule"),
            }
        }
        Some(RuleDecl {
            name,
            stmts,
            span: sp,
        })
    }

    fn step(&mut self, p: P<'_>) -> Option<Step> {
        let sp = self.span(&p);
        Some(match p.as_rule() {
            Rule::traffic_step => Step::Traffic(self.quantity(p.into_inner().nth(1)?)?, sp),
            Rule::promote_step => Step::Promote(sp),
            Rule::approval_step => {
                let mut inner = p.into_inner();
                inner.next();
                let max = match (inner.next(), inner.next()) {
                    (Some(_max), Some(d)) => {
                        let d = self.quantity(d)?;
                        let otherwise = inner
                            .next()
                            .and_then(|e| e.into_inner().nth(1))
                            .and_then(action);
                        Some((d, otherwise))
                    }
                    _ => None,
                };
                Step::Approval { max, span: sp }
            }
            Rule::hold_step => {
                let mut duration = None;
                let mut until = None;
                let mut overrides = Vec::new();
                for h in p.into_inner() {
                    match h.as_rule() {
                        Rule::kw_hold => {}
                        Rule::quantity | Rule::compat_spaced_unit => duration = self.quantity(h),
                        Rule::hold_until => {
                            let mut u = h.into_inner();
                            u.next();
                            let cond = self.expr(u.next()?, 0)?;
                            u.next(); // kw_max
                            let max = self.quantity(u.next()?)?;
                            let otherwise = u
                                .next()
                                .and_then(|e| e.into_inner().nth(1))
                                .and_then(action);
                            until = Some(HoldUntil {
                                cond,
                                max,
                                otherwise,
                            });
                        }
                        Rule::overrides => {
                            for r in h.into_inner() {
                                if let Some(r) = self.rule(r) {
                                    overrides.push(r);
                                }
                            }
                        }
                        _ => self.internal(&h, "a hold"),
                    }
                }
                Step::Hold(Hold {
                    duration,
                    until,
                    overrides,
                    span: sp,
                })
            }
            Rule::compat_step => {
                let kw = p
                    .into_inner()
                    .next()
                    .map(|k| k.as_str().to_string())
                    .unwrap_or_default();
                let help = match kw.as_str() {
                    "setWeight" | "weight" | "setCanaryScale" => {
                        "set the canary's share with `traffic 10%`"
                    }
                    "pause" | "wait" => "wait with `hold 5m`, or for a person with `approval`",
                    _ => {
                        "checks are `rule`s at the top level; `hold` is when they judge the canary"
                    }
                };
                self.errors.push(
                    Diagnostic::new(
                        Code::ForeignSyntax,
                        format!("`{kw}` is not a rolloutctl step"),
                        sp,
                        "not a step",
                    )
                    .with_help(help),
                );
                return None;
            }
            _ => {
                self.internal(&p, "a step");
                return None;
            }
        })
    }

    /// Folds the flat `prefix* operand (infix prefix* operand)*` sequence by precedence
    /// climbing. Depth (parentheses, prefix operators and operator nesting) is capped.
    pub(crate) fn expr(&mut self, p: P<'_>, depth: usize) -> Option<Expr> {
        let mut tokens: Vec<P<'_>> = p.into_inner().collect();
        tokens.reverse();
        let (e, _) = self.climb(&mut tokens, 0, depth)?;
        Some(e)
    }

    fn climb<'i>(
        &mut self,
        toks: &mut Vec<P<'i>>,
        min_prec: u8,
        depth: usize,
    ) -> Option<(Expr, usize)> {
        let (mut lhs, mut lhs_depth) = self.unary(toks, depth)?;
        while let Some(op_pair) = toks.last() {
            let op = match self.binop(op_pair) {
                Some(op) => op,
                None => {
                    let op_pair = toks.pop()?;
                    self.compat_op(&op_pair);
                    // Treat as the closest real operator so the rest still parses.
                    self.climb(toks, u8::MAX, depth)?;
                    return None;
                }
            };
            let prec = op.precedence();
            if prec < min_prec {
                break;
            }
            toks.pop();
            let (rhs, rhs_depth) = self.climb(toks, prec + 1, depth)?;
            let d = lhs_depth.max(rhs_depth) + 1;
            if depth + d > MAX_DEPTH {
                self.errors.push(nesting_error(lhs.span.to(rhs.span)));
                return None;
            }
            let sp = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span: sp,
            };
            lhs_depth = d;
        }
        Some((lhs, lhs_depth))
    }

    /// A prefix expression. `-` binds tightest; `not` binds looser than comparisons and
    /// arithmetic but tighter than `and`/`or`, so `not a > b` means `not (a > b)`.
    fn unary<'i>(&mut self, toks: &mut Vec<P<'i>>, depth: usize) -> Option<(Expr, usize)> {
        let rule = toks.last()?.as_rule();
        if rule != Rule::op_not && rule != Rule::op_neg {
            let operand = toks.pop()?;
            return self.operand(operand, depth);
        }
        let op_pair = toks.pop()?;
        let op_span = self.span(&op_pair);
        if depth + 1 > MAX_DEPTH {
            self.errors.push(nesting_error(op_span));
            return None;
        }
        let (inner, d) = if rule == Rule::op_not {
            self.climb(toks, BinaryOp::Gt.precedence(), depth + 1)?
        } else {
            self.unary(toks, depth + 1)?
        };
        let op = if rule == Rule::op_not {
            UnaryOp::Not
        } else {
            UnaryOp::Neg
        };
        let sp = op_span.to(inner.span);
        Some((
            Expr {
                kind: ExprKind::Unary(op, Box::new(inner)),
                span: sp,
            },
            d + 1,
        ))
    }

    fn operand(&mut self, p: P<'_>, depth: usize) -> Option<(Expr, usize)> {
        let sp = self.span(&p);
        match p.as_rule() {
            Rule::paren => {
                if depth + 1 > MAX_DEPTH {
                    self.errors.push(nesting_error(sp));
                    return None;
                }
                let inner = p.into_inner().next()?;
                let mut tokens: Vec<P<'_>> = inner.into_inner().collect();
                tokens.reverse();
                let (e, d) = self.climb(&mut tokens, 0, depth + 1)?;
                Some((
                    Expr {
                        kind: ExprKind::Paren(Box::new(e)),
                        span: sp,
                    },
                    d + 1,
                ))
            }
            Rule::quantity | Rule::compat_spaced_unit => Some((
                Expr {
                    kind: ExprKind::Number(self.quantity(p)?),
                    span: sp,
                },
                1,
            )),
            Rule::path => Some((
                Expr {
                    kind: ExprKind::Path(p.into_inner().map(ident).collect()),
                    span: sp,
                },
                1,
            )),
            _ => {
                self.internal(&p, "an expression");
                None
            }
        }
    }

    fn binop(&self, p: &P<'_>) -> Option<BinaryOp> {
        Some(match p.as_rule() {
            Rule::op_or => BinaryOp::Or,
            Rule::op_and => BinaryOp::And,
            Rule::op_ge => BinaryOp::Ge,
            Rule::op_le => BinaryOp::Le,
            Rule::op_eq => BinaryOp::Eq,
            Rule::op_ne => BinaryOp::Ne,
            Rule::op_gt => BinaryOp::Gt,
            Rule::op_lt => BinaryOp::Lt,
            Rule::op_add => BinaryOp::Add,
            Rule::op_sub => BinaryOp::Sub,
            Rule::op_mul => BinaryOp::Mul,
            Rule::op_div => BinaryOp::Div,
            _ => return None,
        })
    }

    fn compat_op(&mut self, p: &P<'_>) {
        let (msg, help) = match p.as_str() {
            "&&" => ("`&&` is not an operator here", "write `and`"),
            "||" => ("`||` is not an operator here", "write `or`"),
            "=>" => ("`=>` is not an operator", "did you mean `>=`?"),
            _ => ("`=` assigns; it cannot compare", "write `==` to compare"),
        };
        self.errors.push(
            Diagnostic::new(Code::ForeignSyntax, msg, span(p), "not an operator").with_help(help),
        );
    }

    pub(crate) fn quantity(&mut self, p: P<'_>) -> Option<Quantity> {
        let sp = self.span(&p);
        let text = p.as_str();
        let digits_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let digits = &text[..digits_end];
        let rest = text[digits_end..].trim_start();
        let spaced = p.as_rule() == Rule::compat_spaced_unit;
        let value: f64 = match digits.parse() {
            Ok(v) => v,
            Err(_) => {
                self.errors.push(Diagnostic::new(
                    Code::MalformedQuantity,
                    format!("`{digits}` is not a number"),
                    sp,
                    "not a number",
                ));
                return None;
            }
        };
        if !value.is_finite() {
            self.errors.push(Diagnostic::new(
                Code::MalformedQuantity,
                "number is too large",
                sp,
                "too large",
            ));
            return None;
        }
        if rest.is_empty() {
            return Some(Quantity {
                digits: digits.to_string(),
                value,
                unit: None,
                span: sp,
            });
        }
        let canonical = canonical_unit(rest);
        match (UnitSuffix::parse(rest), canonical) {
            (Some(unit), _) if !spaced => Some(Quantity {
                digits: digits.to_string(),
                value,
                unit: Some(unit),
                span: sp,
            }),
            (_, Some(unit)) => {
                self.errors.push(
                    Diagnostic::new(
                        Code::MalformedQuantity,
                        format!("`{text}` is not how rolloutctl writes this quantity"),
                        sp,
                        format!("write `{digits}{}`", unit.as_str()),
                    )
                    .with_help(format!(
                        "write the short unit right after the number: `{digits}{}`",
                        unit.as_str()
                    )),
                );
                None
            }
            (_, None) => {
                self.errors.push(Diagnostic::new(
                    Code::MalformedQuantity,
                    format!("unknown unit `{rest}`"),
                    sp,
                    "unknown unit",
                ));
                None
            }
        }
    }

    pub(crate) fn string(&mut self, p: P<'_>) -> StrLit {
        let sp = self.span(&p);
        let inner = p.into_inner().next();
        let Some(inner) = inner else {
            return StrLit {
                value: String::new(),
                raw: false,
                span: sp,
            };
        };
        let raw = inner.as_rule() == Rule::raw_string;
        let content = inner.into_inner().next();
        let (text, offset) = content
            .map(|c| (c.as_str(), c.as_span().start()))
            .unwrap_or(("", sp.start));
        let value = if raw {
            text.to_string()
        } else {
            self.unescape(text, offset)
        };
        StrLit {
            value,
            raw,
            span: sp,
        }
    }

    fn unescape(&mut self, text: &str, offset: usize) -> String {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((j, e)) = chars.next() else {
                break;
            };
            match e {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' => {
                    let rest = &text[j + 1..];
                    let parsed = rest
                        .strip_prefix('{')
                        .and_then(|r| r.find('}').map(|end| &r[..end]))
                        .and_then(|hex| {
                            u32::from_str_radix(hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .map(|ch| (ch, hex.len() + 2))
                        });
                    match parsed {
                        Some((ch, consumed)) => {
                            out.push(ch);
                            for _ in 0..consumed {
                                chars.next();
                            }
                        }
                        None => self.bad_escape(offset + i, offset + j + 1),
                    }
                }
                _ => self.bad_escape(offset + i, offset + j + e.len_utf8()),
            }
        }
        out
    }

    fn bad_escape(&mut self, start: usize, end: usize) {
        self.errors.push(Diagnostic::new(
            Code::InvalidEscape,
            "invalid escape sequence",
            Span::new(start, end),
            "not a valid escape",
        ));
    }
}

fn canonical_unit(word: &str) -> Option<UnitSuffix> {
    Some(match word.to_ascii_lowercase().as_str() {
        "ms" | "msec" | "millisecond" | "milliseconds" => UnitSuffix::Millis,
        "s" | "sec" | "secs" | "second" | "seconds" => UnitSuffix::Seconds,
        "m" | "min" | "mins" | "minute" | "minutes" => UnitSuffix::Minutes,
        "h" | "hr" | "hrs" | "hour" | "hours" => UnitSuffix::Hours,
        "d" | "day" | "days" => UnitSuffix::Days,
        "%" | "percent" | "pct" => UnitSuffix::Percent,
        "x" => UnitSuffix::Times,
        _ => return None,
    })
}

fn ident(p: P<'_>) -> Ident {
    Ident {
        name: p.as_str().to_string(),
        span: span(&p),
    }
}

fn action(p: P<'_>) -> Option<ActionKw> {
    let sp = span(&p);
    let kw = p.into_inner().next()?;
    Some(ActionKw {
        action: match kw.as_rule() {
            Rule::kw_rollback => Action::Rollback,
            Rule::kw_pause => Action::Pause,
            _ => Action::Warn,
        },
        span: sp,
    })
}
