//! A stream's filter: a small expression language over Information Element names, parsed once
//! (winnow), resolved against the information model (so a wrong name or a value of the wrong
//! kind is refused when the stream is configured, with the column where it is), compiled once
//! per template into column indexes, and evaluated over a batch's columns into a bit mask.
//!
//! ```text
//! expr       := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not"* primary
//! primary    := "(" expr ")" | comparison
//! comparison := target ( OP value | "in" "(" value ("," value)* ")" | "in" value )
//! target     := element name | @exporter | @domain | @template
//! OP         := == | != | < | <= | > | >=
//! value      := number | IPv4/IPv6 address | PREFIX (addr/len) | MAC | true | false
//!             | RFC 3339 time | "quoted string"
//! ```
//!
//! A comparison on an element a record does not carry is false (so `not x in P` keeps records
//! without `x`); on an element a template repeats, it is true when any occurrence matches.

use crate::wire::batch::{Batch, Column};
use crate::wire::model::DataType;
use crate::wire::ndjson::ntp_to_unix;
use crate::wire::plan::Plan;
use crate::wire::registry::Registry;
use ipnet::IpNet;
use std::net::IpAddr;
use winnow::ascii::multispace0;
use winnow::combinator::{alt, cut_err, delimited, opt, preceded, repeat, separated};
use winnow::error::{ContextError, ErrMode, ModalResult, StrContext, StrContextValue};
use winnow::prelude::*;
use winnow::token::{any, take_while};

/// Filters longer than this are refused: they come from tenants through the API.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Parentheses nest at most this deep (the parser recurses on them).
pub const MAX_NESTING: usize = 32;
/// Values in one `in (...)` list.
pub const MAX_LIST: usize = 1024;

/// Why a filter was refused, and where: `column 34: expected a value after 'in'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct FilterError {
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    #[inline(always)]
    fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Op::Eq => o == Equal,
            Op::Ne => o != Equal,
            Op::Lt => o == Less,
            Op::Le => o != Greater,
            Op::Gt => o == Greater,
            Op::Ge => o != Less,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax: the parser builds this tree, with byte offsets for the errors of the next pass.

#[derive(Debug, Clone, PartialEq)]
enum Ast {
    Or(Vec<Ast>),
    And(Vec<Ast>),
    Not(Box<Ast>),
    Cmp {
        target: (String, usize),
        test: AstTest,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum AstTest {
    Op(Op, Word),
    InList(Vec<Word>),
    In(Word),
}

/// A value as written, with where it starts.
#[derive(Debug, Clone, PartialEq)]
struct Word {
    text: String,
    quoted: bool,
    at: usize,
}

type In<'a> = &'a str;

fn expected(what: &'static str) -> StrContext {
    StrContext::Expected(StrContextValue::Description(what))
}

fn ws(i: &mut In<'_>) -> ModalResult<()> {
    multispace0.void().parse_next(i)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A keyword, not the start of a longer name.
fn kw<'a>(word: &'static str) -> impl Parser<In<'a>, (), ErrMode<ContextError>> {
    move |i: &mut In<'a>| {
        ws(i)?;
        let start = *i;
        word.void().parse_next(i)?;
        if i.starts_with(is_ident) {
            *i = start;
            return Err(ErrMode::Backtrack(ContextError::new()));
        }
        Ok(())
    }
}

/// Tracks the byte offset of the current position: the parsers work on `&str`, whose remaining
/// length against the whole source gives it.
struct Pos(usize);

impl Pos {
    fn at(&self, i: &In<'_>) -> usize {
        self.0 - i.len()
    }
}

fn parse(src: &str) -> Result<Ast, FilterError> {
    let pos = Pos(src.len());
    let mut parser = delimited(ws, |i: &mut In<'_>| or_expr(i, &pos), ws);
    parser.parse(src).map_err(|e| {
        let offset = e.offset();
        let ctx = e.inner();
        // The innermost expectation is the one that failed; the outer ones only repeat that
        // a condition went wrong.
        let wanted = ctx.context().find_map(|c| match c {
            StrContext::Expected(v) => Some(v.to_string()),
            _ => None,
        });
        let rest = &src[offset..];
        let message = if let Some(w) = wanted {
            format!("expected {w}")
        } else if rest.trim().is_empty() {
            "unexpected end of the filter".to_string()
        } else {
            let token: String = rest.trim_start().chars().take(20).collect();
            format!("unexpected '{token}': expected 'and', 'or' or the end of the filter")
        };
        FilterError {
            column: column_of(src, offset + (rest.len() - rest.trim_start().len())),
            message,
        }
    })
}

fn column_of(src: &str, byte: usize) -> usize {
    src[..byte.min(src.len())].chars().count() + 1
}

fn or_expr(i: &mut In<'_>, pos: &Pos) -> ModalResult<Ast> {
    let first = and_expr(i, pos)?;
    let rest: Vec<Ast> = repeat(
        0..,
        preceded(
            kw("or"),
            cut_err(|i: &mut In<'_>| and_expr(i, pos)).context(expected("a condition after 'or'")),
        ),
    )
    .parse_next(i)?;
    Ok(if rest.is_empty() {
        first
    } else {
        Ast::Or(std::iter::once(first).chain(rest).collect())
    })
}

fn and_expr(i: &mut In<'_>, pos: &Pos) -> ModalResult<Ast> {
    let first = unary(i, pos)?;
    let rest: Vec<Ast> = repeat(
        0..,
        preceded(
            kw("and"),
            cut_err(|i: &mut In<'_>| unary(i, pos)).context(expected("a condition after 'and'")),
        ),
    )
    .parse_next(i)?;
    Ok(if rest.is_empty() {
        first
    } else {
        Ast::And(std::iter::once(first).chain(rest).collect())
    })
}

/// `not` repeats without recursion: a filter of a thousand `not`s costs no stack.
fn unary(i: &mut In<'_>, pos: &Pos) -> ModalResult<Ast> {
    let nots: usize = repeat(0.., kw("not")).parse_next(i)?;
    let e = if nots > 0 {
        cut_err(|i: &mut In<'_>| primary(i, pos))
            .context(expected("a condition after 'not'"))
            .parse_next(i)?
    } else {
        primary(i, pos)?
    };
    // `not not x` is `x`: the tree stays shallow whatever was typed.
    Ok(if nots % 2 == 1 {
        Ast::Not(Box::new(e))
    } else {
        e
    })
}

fn primary(i: &mut In<'_>, pos: &Pos) -> ModalResult<Ast> {
    ws(i)?;
    if i.starts_with('(') {
        '('.parse_next(i)?;
        let e = cut_err(|i: &mut In<'_>| or_expr(i, pos))
            .context(expected("a condition after '('"))
            .parse_next(i)?;
        ws(i)?;
        cut_err(')').context(expected("')'")).parse_next(i)?;
        return Ok(e);
    }
    comparison(i, pos)
}

fn target(i: &mut In<'_>, pos: &Pos) -> ModalResult<(String, usize)> {
    ws(i)?;
    let at = pos.at(i);
    let name = (opt('@'), take_while(1.., is_ident))
        .take()
        .context(expected("an element name, @exporter, @domain or @template"))
        .parse_next(i)?;
    Ok((name.to_string(), at))
}

fn op(i: &mut In<'_>) -> ModalResult<Op> {
    ws(i)?;
    alt((
        "==".value(Op::Eq),
        "!=".value(Op::Ne),
        "<=".value(Op::Le),
        ">=".value(Op::Ge),
        "<".value(Op::Lt),
        ">".value(Op::Gt),
    ))
    .parse_next(i)
}

fn comparison(i: &mut In<'_>, pos: &Pos) -> ModalResult<Ast> {
    let target = target(i, pos)?;
    let test = cut_err(alt((
        (
            op,
            cut_err(|i: &mut In<'_>| word(i, pos)).context(expected("a value after the operator")),
        )
            .map(|(o, w)| AstTest::Op(o, w)),
        preceded(
            kw("in"),
            cut_err(alt((
                |i: &mut In<'_>| list(i, pos).map(AstTest::InList),
                |i: &mut In<'_>| word(i, pos).map(AstTest::In),
            )))
            .context(expected("a value after 'in'")),
        ),
    )))
    .context(expected(
        "an operator (==, !=, <, <=, >, >=, in) after the element name",
    ))
    .parse_next(i)?;
    Ok(Ast::Cmp { target, test })
}

fn list(i: &mut In<'_>, pos: &Pos) -> ModalResult<Vec<Word>> {
    ws(i)?;
    '('.parse_next(i)?;
    let items: Vec<Word> = cut_err(separated(1.., |i: &mut In<'_>| word(i, pos), (ws, ',')))
        .context(expected("a value in the list"))
        .parse_next(i)?;
    ws(i)?;
    cut_err(')')
        .context(expected("',' or ')' in the list"))
        .parse_next(i)?;
    Ok(items)
}

fn word(i: &mut In<'_>, pos: &Pos) -> ModalResult<Word> {
    ws(i)?;
    let at = pos.at(i);
    if i.starts_with('"') {
        '"'.parse_next(i)?;
        let mut text = String::new();
        loop {
            match cut_err(any)
                .context(expected("a closing '\"'"))
                .parse_next(i)?
            {
                '"' => break,
                '\\' => text.push(
                    cut_err(any)
                        .context(expected("a character after '\\'"))
                        .parse_next(i)?,
                ),
                c => text.push(c),
            }
        }
        return Ok(Word {
            text,
            quoted: true,
            at,
        });
    }
    let text = take_while(1.., |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '_' | '+' | '-')
    })
    .parse_next(i)?;
    Ok(Word {
        text: text.to_string(),
        quoted: false,
        at,
    })
}

// ---------------------------------------------------------------------------------------------
// Meaning: names resolved, values read as the element's type.

/// What a comparison reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Element {
        pen: u32,
        id: u16,
    },
    /// The exporter's address.
    Exporter,
    Domain,
    Template,
}

/// A value of the kind its element holds.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Int(i128),
    Float(f64),
    Bool(bool),
    Mac([u8; 6]),
    Addr(IpAddr),
    Prefix(IpNet),
    /// Nanoseconds since the Unix epoch.
    Time(i128),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Cmp(Op, Lit),
    /// Values (and, for addresses, prefixes) any of which matches.
    In(Vec<Lit>),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Leaf(Target, Test),
}

/// A parsed and checked filter; [`Filter::compile`] readies it for one template.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    source: String,
    root: Node,
}

/// What kind of value a target holds, as far as writing a literal goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Number,
    Bool,
    Mac,
    Ipv4,
    Ipv6,
    AnyAddr,
    /// Date-time, with how many nanoseconds one unit of a bare number is.
    Time(i128),
    Text,
    Unsupported,
}

impl Kind {
    fn of(t: DataType) -> Kind {
        use DataType::*;
        match t {
            Unsigned8 | Unsigned16 | Unsigned32 | Unsigned64 | Signed8 | Signed16 | Signed32
            | Signed64 | Float32 | Float64 => Kind::Number,
            Boolean => Kind::Bool,
            MacAddress => Kind::Mac,
            Ipv4Address => Kind::Ipv4,
            Ipv6Address => Kind::Ipv6,
            DateTimeSeconds => Kind::Time(1_000_000_000),
            DateTimeMilliseconds => Kind::Time(1_000_000),
            DateTimeMicroseconds => Kind::Time(1_000),
            DateTimeNanoseconds => Kind::Time(1),
            String | OctetArray => Kind::Text,
            Unsigned256 | BasicList | SubTemplateList | SubTemplateMultiList => Kind::Unsupported,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Number => "a number",
            Kind::Bool => "true or false",
            Kind::Mac => "a MAC address (00:11:22:33:44:55)",
            Kind::Ipv4 => "an IPv4 address or prefix",
            Kind::Ipv6 => "an IPv6 address or prefix",
            Kind::AnyAddr => "an address or prefix",
            Kind::Time(_) => "an RFC 3339 time or a number",
            Kind::Text => "a quoted string",
            Kind::Unsupported => "nothing: it cannot be compared",
        }
    }

    fn ordered(self) -> bool {
        matches!(
            self,
            Kind::Number | Kind::Ipv4 | Kind::Ipv6 | Kind::AnyAddr | Kind::Time(_)
        )
    }
}

impl Filter {
    /// Parses and checks `src` against `registry`'s element names and types.
    pub fn parse(src: &str, registry: &Registry) -> Result<Filter, FilterError> {
        if src.len() > MAX_FILTER_BYTES {
            return Err(FilterError {
                column: 1,
                message: format!(
                    "the filter is {} bytes; at most {MAX_FILTER_BYTES} are allowed",
                    src.len()
                ),
            });
        }
        check_nesting(src)?;
        let ast = parse(src)?;
        let root = resolve(src, &ast, registry)?;
        Ok(Filter {
            source: src.to_string(),
            root,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The filter for records of `plan`'s template: names become column indexes, and
    /// comparisons on elements the template lacks become constants.
    pub fn compile(&self, plan: &Plan) -> Compiled {
        Compiled {
            prog: compile_node(&self.root, plan),
        }
    }
}

/// Parentheses outside quoted strings nest at most [`MAX_NESTING`] deep.
fn check_nesting(src: &str) -> Result<(), FilterError> {
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for (at, c) in src.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(FilterError {
                        column: column_of(src, at),
                        message: format!("parentheses nest more than {MAX_NESTING} deep"),
                    });
                }
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn resolve(src: &str, ast: &Ast, registry: &Registry) -> Result<Node, FilterError> {
    Ok(match ast {
        Ast::Or(v) => Node::Or(
            v.iter()
                .map(|a| resolve(src, a, registry))
                .collect::<Result<_, _>>()?,
        ),
        Ast::And(v) => Node::And(
            v.iter()
                .map(|a| resolve(src, a, registry))
                .collect::<Result<_, _>>()?,
        ),
        Ast::Not(a) => Node::Not(Box::new(resolve(src, a, registry)?)),
        Ast::Cmp {
            target: (name, at),
            test,
        } => {
            let err = |at: usize, message: String| FilterError {
                column: column_of(src, at),
                message,
            };
            let (target, kind, shown) = match name.as_str() {
                "@exporter" => (Target::Exporter, Kind::AnyAddr, "@exporter".to_string()),
                "@domain" => (Target::Domain, Kind::Number, "@domain".to_string()),
                "@template" => (Target::Template, Kind::Number, "@template".to_string()),
                n if n.starts_with('@') => {
                    return Err(err(
                        *at,
                        format!(
                            "unknown '{n}': the record's own fields are @exporter, @domain and @template"
                        ),
                    ));
                }
                n => {
                    let e = registry.find(n).ok_or_else(|| {
                        err(*at, format!("'{n}' is not an Information Element name"))
                    })?;
                    let kind = Kind::of(e.data_type);
                    let shown = format!("{n} (an {})", e.data_type.iana_name());
                    (
                        Target::Element {
                            pen: e.pen,
                            id: e.id,
                        },
                        kind,
                        shown,
                    )
                }
            };
            if kind == Kind::Unsupported {
                return Err(err(*at, format!("{shown} cannot be compared")));
            }
            let value = |w: &Word| {
                literal(w, kind)
                    .map_err(|why| err(w.at, format!("{shown} takes {}: {why}", kind.describe())))
            };
            let test = match test {
                AstTest::Op(op, w) => {
                    let v = value(w)?;
                    if matches!(v, Lit::Prefix(_)) {
                        return Err(err(
                            w.at,
                            format!("a prefix is matched with 'in', not '{}'", op.text()),
                        ));
                    }
                    if !kind.ordered() && !matches!(op, Op::Eq | Op::Ne) {
                        return Err(err(
                            w.at,
                            format!(
                                "{shown} is compared only with == and !=, not '{}'",
                                op.text()
                            ),
                        ));
                    }
                    Test::Cmp(*op, v)
                }
                AstTest::InList(ws) => {
                    if ws.len() > MAX_LIST {
                        return Err(err(
                            ws[MAX_LIST].at,
                            format!("a list holds at most {MAX_LIST} values"),
                        ));
                    }
                    Test::In(ws.iter().map(value).collect::<Result<_, _>>()?)
                }
                AstTest::In(w) => match value(w)? {
                    p @ Lit::Prefix(_) => Test::In(vec![p]),
                    _ => {
                        return Err(err(
                            w.at,
                            "'in' takes a prefix (10.0.0.0/8) or a list in parentheses: (80, 443)"
                                .to_string(),
                        ));
                    }
                },
            };
            Node::Leaf(target, test)
        }
    })
}

/// Reads `w` as a value of `kind`.
fn literal(w: &Word, kind: Kind) -> Result<Lit, String> {
    let t = w.text.as_str();
    let shown = || format!("'{t}' is not one");
    match kind {
        Kind::Text => {
            if w.quoted {
                Ok(Lit::Bytes(t.as_bytes().to_vec()))
            } else {
                Err(format!("'{t}' is not quoted"))
            }
        }
        _ if w.quoted && !matches!(kind, Kind::Time(_)) => Err(shown()),
        Kind::Number => {
            if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                return u64::from_str_radix(hex, 16)
                    .map(|v| Lit::Int(v as i128))
                    .map_err(|_| shown());
            }
            if let Ok(v) = t.parse::<i128>() {
                if v < i64::MIN as i128 || v > u64::MAX as i128 {
                    return Err(format!("'{t}' is outside the 64-bit range"));
                }
                return Ok(Lit::Int(v));
            }
            match t.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Lit::Float(v)),
                _ => Err(shown()),
            }
        }
        Kind::Bool => match t {
            "true" => Ok(Lit::Bool(true)),
            "false" => Ok(Lit::Bool(false)),
            _ => Err(shown()),
        },
        Kind::Mac => {
            let parts: Vec<&str> = t.split([':', '-']).collect();
            let mut mac = [0u8; 6];
            if parts.len() != 6 {
                return Err(shown());
            }
            for (m, p) in mac.iter_mut().zip(parts) {
                if p.len() != 2 {
                    return Err(shown());
                }
                *m = u8::from_str_radix(p, 16).map_err(|_| shown())?;
            }
            Ok(Lit::Mac(mac))
        }
        Kind::Ipv4 | Kind::Ipv6 | Kind::AnyAddr => {
            let lit = if t.contains('/') {
                let p: IpNet = t.parse().map_err(|_| shown())?;
                // A prefix with host bits set is almost always a typo: say so.
                if p.trunc() != p {
                    return Err(format!(
                        "'{t}' has bits set past its length; did you mean {}?",
                        p.trunc()
                    ));
                }
                Lit::Prefix(p)
            } else {
                Lit::Addr(t.parse::<IpAddr>().map_err(|_| shown())?)
            };
            let v4 = match &lit {
                Lit::Prefix(p) => matches!(p, IpNet::V4(_)),
                Lit::Addr(a) => a.is_ipv4(),
                _ => false,
            };
            match (kind, v4) {
                (Kind::Ipv4, false) => Err(format!("'{t}' is an IPv6 value")),
                (Kind::Ipv6, true) => Err(format!(
                    "'{t}' is an IPv4 value (write IPv4-mapped addresses as ::ffff:{t})"
                )),
                _ => Ok(lit),
            }
        }
        Kind::Time(unit) => {
            if !w.quoted
                && let Ok(v) = t.parse::<i64>()
            {
                return Ok(Lit::Time(v as i128 * unit));
            }
            let d = chrono::DateTime::parse_from_rfc3339(t).map_err(|_| shown())?;
            Ok(Lit::Time(
                d.timestamp() as i128 * 1_000_000_000 + d.timestamp_subsec_nanos() as i128,
            ))
        }
        Kind::Unsupported => Err(shown()),
    }
}

// ---------------------------------------------------------------------------------------------
// Per template, and evaluation over columns.

#[derive(Debug, Clone)]
enum Prog {
    Const(bool),
    Or(Vec<Prog>),
    And(Vec<Prog>),
    Not(Box<Prog>),
    /// The template's occurrences of the element (its field indexes).
    Field(Vec<usize>, Test),
    /// Same for every record of a batch.
    Meta(Target, Test),
}

fn compile_node(n: &Node, plan: &Plan) -> Prog {
    match n {
        Node::Or(v) => Prog::Or(v.iter().map(|n| compile_node(n, plan)).collect()),
        Node::And(v) => Prog::And(v.iter().map(|n| compile_node(n, plan)).collect()),
        Node::Not(n) => match compile_node(n, plan) {
            Prog::Const(b) => Prog::Const(!b),
            p => Prog::Not(Box::new(p)),
        },
        Node::Leaf(Target::Element { pen, id }, test) => {
            let fields: Vec<usize> = plan
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.spec.pen == *pen && f.spec.id == *id)
                .map(|(i, _)| i)
                .collect();
            if fields.is_empty() {
                Prog::Const(false)
            } else {
                Prog::Field(fields, test.clone())
            }
        }
        Node::Leaf(t, test) => Prog::Meta(t.clone(), test.clone()),
    }
}

/// What a batch's records share: who sent them and under which Observation Domain and template.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub exporter: IpAddr,
    pub domain: u32,
    pub template: u16,
}

/// One bit per record of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mask {
    words: Vec<u64>,
    len: usize,
}

impl Mask {
    pub fn new(len: usize, value: bool) -> Mask {
        let mut m = Mask {
            words: vec![if value { !0 } else { 0 }; len.div_ceil(64)],
            len,
        };
        m.clear_tail();
        m
    }

    fn clear_tail(&mut self) {
        if !self.len.is_multiple_of(64)
            && let Some(w) = self.words.last_mut()
        {
            *w &= (1u64 << (self.len % 64)) - 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, r: usize) -> bool {
        self.words[r / 64] >> (r % 64) & 1 == 1
    }

    pub fn set(&mut self, r: usize, v: bool) {
        let bit = 1u64 << (r % 64);
        if v {
            self.words[r / 64] |= bit;
        } else {
            self.words[r / 64] &= !bit;
        }
    }

    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn all(&self) -> bool {
        self.count() == self.len
    }

    /// The records whose bit is set, in order.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(k, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(k * 64 + b)
            })
        })
    }

    fn fill(&mut self, v: bool) {
        self.words.fill(if v { !0 } else { 0 });
        self.clear_tail();
    }

    fn and(&mut self, o: &Mask) {
        self.words
            .iter_mut()
            .zip(&o.words)
            .for_each(|(a, b)| *a &= b);
    }

    fn or(&mut self, o: &Mask) {
        self.words
            .iter_mut()
            .zip(&o.words)
            .for_each(|(a, b)| *a |= b);
    }

    fn not(&mut self) {
        self.words.iter_mut().for_each(|a| *a = !*a);
        self.clear_tail();
    }

    /// Sets the bits of the records where `pred` holds (an OR into what is there), 64 records
    /// to a word so the loop has no data-dependent branch.
    #[inline(always)]
    fn or_where<T: Copy>(&mut self, col: &[T], pred: impl Fn(T) -> bool) {
        for (w, chunk) in self.words.iter_mut().zip(col.chunks(64)) {
            let mut bits = 0u64;
            for (k, &v) in chunk.iter().enumerate() {
                bits |= (pred(v) as u64) << k;
            }
            *w |= bits;
        }
    }
}

/// A filter ready for one template's records.
#[derive(Debug, Clone)]
pub struct Compiled {
    prog: Prog,
}

impl Compiled {
    /// True when no record of the template can pass (the filter is false whatever the values).
    pub fn never(&self) -> bool {
        matches!(self.prog, Prog::Const(false))
    }

    /// The records of `batch` (decoded from `msg`) that pass, as a mask.
    pub fn eval(&self, batch: &Batch, msg: &[u8], meta: &Meta) -> Mask {
        let mut out = Mask::new(batch.len(), false);
        eval(&self.prog, batch, msg, meta, &mut out);
        out
    }
}

/// Writes the mask of `p` into `out` (whose length is the batch's).
fn eval(p: &Prog, batch: &Batch, msg: &[u8], meta: &Meta, out: &mut Mask) {
    match p {
        Prog::Const(b) => out.fill(*b),
        Prog::Not(p) => {
            eval(p, batch, msg, meta, out);
            out.not();
        }
        Prog::And(ps) | Prog::Or(ps) => {
            let is_and = matches!(p, Prog::And(_));
            eval(&ps[0], batch, msg, meta, out);
            let mut tmp = Mask::new(out.len, false);
            for p in &ps[1..] {
                // Short cut: nothing left to narrow (and) or to add (or).
                if (is_and && out.count() == 0) || (!is_and && out.all()) {
                    break;
                }
                eval(p, batch, msg, meta, &mut tmp);
                if is_and {
                    out.and(&tmp);
                } else {
                    out.or(&tmp);
                }
            }
        }
        Prog::Meta(t, test) => {
            let v = match t {
                Target::Exporter => Scalar::Addr(meta.exporter),
                Target::Domain => Scalar::Int(meta.domain as i128),
                Target::Template => Scalar::Int(meta.template as i128),
                Target::Element { .. } => unreachable!("element targets compile to fields"),
            };
            out.fill(test_scalar(test, &v));
        }
        Prog::Field(fields, test) => {
            out.fill(false);
            for &f in fields {
                or_column(out, batch.column(f), msg, test);
            }
        }
    }
}

/// A value as the meta targets and the row-by-row reference evaluator hold it.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Int(i128),
    Float(f64),
    Bool(u8),
    Mac([u8; 6]),
    Addr(IpAddr),
    Time(i128),
    Bytes(Vec<u8>),
}

fn cmp_lit(v: &Scalar, l: &Lit) -> Option<std::cmp::Ordering> {
    match (v, l) {
        (Scalar::Int(a), Lit::Int(b)) => Some(a.cmp(b)),
        (Scalar::Int(a), Lit::Float(b)) => (*a as f64).partial_cmp(b),
        (Scalar::Float(a), Lit::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Scalar::Float(a), Lit::Float(b)) => a.partial_cmp(b),
        (Scalar::Bool(a), Lit::Bool(b)) => Some(a.cmp(&if *b { 1 } else { 2 })),
        (Scalar::Mac(a), Lit::Mac(b)) => Some(a.cmp(b)),
        (Scalar::Addr(IpAddr::V4(a)), Lit::Addr(IpAddr::V4(b))) => Some(a.cmp(b)),
        (Scalar::Addr(IpAddr::V6(a)), Lit::Addr(IpAddr::V6(b))) => Some(a.cmp(b)),
        (Scalar::Time(a), Lit::Time(b)) => Some(a.cmp(b)),
        (Scalar::Bytes(a), Lit::Bytes(b)) => Some(a.as_slice().cmp(b.as_slice())),
        _ => None,
    }
}

fn test_scalar(t: &Test, v: &Scalar) -> bool {
    match t {
        Test::Cmp(op, l) => cmp_lit(v, l).is_some_and(|o| op.holds(o)),
        Test::In(ls) => ls.iter().any(|l| match (l, v) {
            (Lit::Prefix(p), Scalar::Addr(a)) => p.contains(a),
            _ => cmp_lit(v, l) == Some(std::cmp::Ordering::Equal),
        }),
    }
}

/// The value of one record's field as a [`Scalar`]: the reference the column loops must agree
/// with (tests), and the path for the rare column kinds that have no loop of their own.
fn scalar_at(col: &Column<'_>, msg: &[u8], r: usize) -> Option<Scalar> {
    Some(match col {
        Column::U8(c) => Scalar::Int(c[r] as i128),
        Column::U16(c) => Scalar::Int(c[r] as i128),
        Column::U32(c) => Scalar::Int(c[r] as i128),
        Column::U64(c) => Scalar::Int(c[r] as i128),
        Column::I8(c) => Scalar::Int(c[r] as i128),
        Column::I16(c) => Scalar::Int(c[r] as i128),
        Column::I32(c) => Scalar::Int(c[r] as i128),
        Column::I64(c) => Scalar::Int(c[r] as i128),
        Column::F32(c) => Scalar::Float(c[r] as f64),
        Column::F64(c) => Scalar::Float(c[r]),
        Column::Bool(c) => Scalar::Bool(c[r]),
        Column::Mac(c) => Scalar::Mac(c[r]),
        Column::Ipv4(c) => Scalar::Addr(IpAddr::from(c[r])),
        Column::Ipv6(c) => Scalar::Addr(IpAddr::from(c[r])),
        Column::DateTimeSeconds(c) => Scalar::Time(c[r] as i128 * 1_000_000_000),
        Column::DateTimeMilliseconds(c) => Scalar::Time(c[r] as i128 * 1_000_000),
        Column::DateTimeMicroseconds(c) => Scalar::Time(ntp_nanos(c[r] & !0x7ff)),
        Column::DateTimeNanoseconds(c) => Scalar::Time(ntp_nanos(c[r])),
        Column::Spans(c) => Scalar::Bytes(msg.get(c[r].range())?.to_vec()),
    })
}

fn ntp_nanos(v: u64) -> i128 {
    let (s, n) = ntp_to_unix(v);
    s as i128 * 1_000_000_000 + n as i128
}

/// ORs into `out` the records of `col` that pass `test`. The common shapes (integers against a
/// number, addresses against an address or prefixes, times) have tight loops; the rest go value
/// by value through [`Scalar`].
fn or_column(out: &mut Mask, col: Column<'_>, msg: &[u8], test: &Test) {
    macro_rules! ints {
        ($c:expr) => {{
            let c = $c;
            match test {
                Test::Cmp(op, Lit::Int(l)) => {
                    let (op, l) = (*op, *l);
                    out.or_where(c, |v| op.holds((v as i128).cmp(&l)));
                    return;
                }
                Test::In(ls) if ls.iter().all(|l| matches!(l, Lit::Int(_))) => {
                    let mut set: Vec<i128> = ls
                        .iter()
                        .filter_map(|l| match l {
                            Lit::Int(v) => Some(*v),
                            _ => None,
                        })
                        .collect();
                    set.sort_unstable();
                    if set.len() <= 8 {
                        out.or_where(c, |v| set.contains(&(v as i128)));
                    } else {
                        out.or_where(c, |v| set.binary_search(&(v as i128)).is_ok());
                    }
                    return;
                }
                _ => {}
            }
        }};
    }
    match col {
        Column::U8(c) => ints!(c),
        Column::U16(c) => ints!(c),
        Column::U32(c) => ints!(c),
        Column::U64(c) => ints!(c),
        Column::I8(c) => ints!(c),
        Column::I16(c) => ints!(c),
        Column::I32(c) => ints!(c),
        Column::I64(c) => ints!(c),
        Column::Ipv4(c) => {
            let as_v4 = |l: &Lit| match l {
                Lit::Addr(IpAddr::V4(a)) => Some((u32::from(*a), u32::MAX)),
                Lit::Prefix(IpNet::V4(p)) => Some((u32::from(p.network()), u32::from(p.netmask()))),
                _ => None,
            };
            match test {
                Test::Cmp(op, Lit::Addr(IpAddr::V4(a))) => {
                    let (op, a) = (*op, u32::from(*a));
                    out.or_where(c, |v| op.holds(u32::from_be_bytes(v).cmp(&a)));
                }
                Test::In(ls) => {
                    let nets: Vec<(u32, u32)> = ls.iter().filter_map(as_v4).collect();
                    out.or_where(c, |v| {
                        let v = u32::from_be_bytes(v);
                        nets.iter().any(|&(n, m)| v & m == n)
                    });
                }
                _ => {}
            }
            return;
        }
        Column::Ipv6(c) => {
            let as_v6 = |l: &Lit| match l {
                Lit::Addr(IpAddr::V6(a)) => Some((u128::from(*a), u128::MAX)),
                Lit::Prefix(IpNet::V6(p)) => {
                    Some((u128::from(p.network()), u128::from(p.netmask())))
                }
                _ => None,
            };
            match test {
                Test::Cmp(op, Lit::Addr(IpAddr::V6(a))) => {
                    let (op, a) = (*op, u128::from(*a));
                    out.or_where(c, |v| op.holds(u128::from_be_bytes(v).cmp(&a)));
                }
                Test::In(ls) => {
                    let nets: Vec<(u128, u128)> = ls.iter().filter_map(as_v6).collect();
                    out.or_where(c, |v| {
                        let v = u128::from_be_bytes(v);
                        nets.iter().any(|&(n, m)| v & m == n)
                    });
                }
                _ => {}
            }
            return;
        }
        Column::DateTimeMilliseconds(c) => {
            if let Test::Cmp(op, Lit::Time(t)) = test {
                let (op, t) = (*op, *t);
                out.or_where(c, |v| op.holds((v as i128 * 1_000_000).cmp(&t)));
                return;
            }
        }
        Column::DateTimeSeconds(c) => {
            if let Test::Cmp(op, Lit::Time(t)) = test {
                let (op, t) = (*op, *t);
                out.or_where(c, |v| op.holds((v as i128 * 1_000_000_000).cmp(&t)));
                return;
            }
        }
        _ => {}
    }
    for r in 0..col.len() {
        if !out.get(r) && scalar_at(&col, msg, r).is_some_and(|v| test_scalar(test, &v)) {
            out.set(r, true);
        }
    }
}

/// The filter's verdict on one record, value by value: what [`Compiled::eval`] must agree with.
#[cfg(test)]
fn reference(f: &Filter, batch: &Batch, msg: &[u8], meta: &Meta, r: usize) -> bool {
    fn node(n: &Node, batch: &Batch, msg: &[u8], meta: &Meta, r: usize) -> bool {
        match n {
            Node::Or(v) => v.iter().any(|n| node(n, batch, msg, meta, r)),
            Node::And(v) => v.iter().all(|n| node(n, batch, msg, meta, r)),
            Node::Not(n) => !node(n, batch, msg, meta, r),
            Node::Leaf(Target::Element { pen, id }, t) => batch
                .plan
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.spec.pen == *pen && f.spec.id == *id)
                .any(|(i, _)| {
                    scalar_at(&batch.column(i), msg, r).is_some_and(|v| test_scalar(t, &v))
                }),
            Node::Leaf(Target::Exporter, t) => test_scalar(t, &Scalar::Addr(meta.exporter)),
            Node::Leaf(Target::Domain, t) => test_scalar(t, &Scalar::Int(meta.domain as i128)),
            Node::Leaf(Target::Template, t) => test_scalar(t, &Scalar::Int(meta.template as i128)),
        }
    }
    node(&f.root, batch, msg, meta, r)
}

#[cfg(test)]
mod tests;
