//! `herald serve --config FILE` (`HERALD_CONFIG`): every option of `herald serve` from a TOML
//! file, with the precedence flag > environment > file > default.
//!
//! Nothing here names an option. The file's keys are the long names of `herald serve`'s
//! options as clap knows them (`listen`, `data-dir`, `admin-listen`…), read from the command's
//! own definition, so an option added to `ServeArgs` can be set in the file at once, with its
//! type rule derived from its action and value parser. The file's values are turned into
//! command-line arguments (`--data-dir=/var/lib/herald`) and parsed by clap with the real
//! command line, so that they are checked exactly as flags are (value parsers, `requires`,
//! conflicts). Precedence comes from leaving out the keys whose option is on the command line
//! or whose environment variable is set.
//!
//! Refused, with one line naming the file: a key that is no option (a typo must not be
//! ignored), a value of the wrong TOML type (a switch or a `bool` option takes `true`/`false`, a
//! number a TOML integer, a list a TOML array, anything else a string), a value the option's parser refuses,
//! and a file that is not TOML.

use std::any::TypeId;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// The subcommand whose options a config file sets.
const SUBCOMMAND: &str = "serve";
/// The option that names the file (it cannot be set in the file itself).
const CONFIG_OPTION: &str = "config";
/// Largest config file read. A file of options is a few KiB; a bound keeps a wrong path (a
/// device, a log file) from being read whole.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Why a config file cannot be used: one line, naming the file (and the key).
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigFileError {
    pub path: PathBuf,
    pub message: String,
}

/// What a config file contributed, for the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub path: PathBuf,
    /// Keys whose values were used.
    pub used: Vec<String>,
    /// Keys left out because a flag or an environment variable set the option.
    pub overridden: Vec<String>,
    /// Keys of secret options (those whose environment values `--help` hides) in a file that
    /// every user may read.
    pub exposed_secrets: Vec<String>,
}

/// The command line `args` (program name first) with the options of the config file that
/// `herald serve` names (by `--config` or its environment variable) added, and what the file
/// contributed. Without `serve` or without a file, `args` unchanged and `None`.
pub fn expand(
    command: &Command,
    args: Vec<OsString>,
) -> Result<(Vec<OsString>, Option<Applied>), ConfigFileError> {
    let Some(serve) = command.find_subcommand(SUBCOMMAND) else { return Ok((args, None)) };
    if args.get(1).map(OsString::as_os_str) != Some(OsStr::new(SUBCOMMAND)) {
        return Ok((args, None));
    }
    let given = given_on_command_line(serve, &args[2..]);
    let config_arg = serve
        .get_arguments()
        .find(|arg| arg.get_id() == CONFIG_OPTION)
        .expect("`herald serve` has a --config option");
    let Some(path) = config_path(config_arg, &args[2..]) else { return Ok((args, None)) };
    let table = read(&path)?;
    let mut added = Vec::new();
    let mut applied =
        Applied { path: path.clone(), used: Vec::new(), overridden: Vec::new(), exposed_secrets: Vec::new() };
    let fail = |message: String| ConfigFileError { path: path.clone(), message };
    for (key, value) in &table {
        let arg = option_of_key(serve, key).map_err(fail)?;
        let values = values_of(arg, key, value).map_err(fail)?;
        if arg.is_hide_env_values_set() && is_world_readable(&path) {
            applied.exposed_secrets.push(key.clone());
        }
        let from_env = arg.get_env().is_some_and(|name| std::env::var_os(name).is_some());
        if given.contains(&arg.get_id().as_str()) || from_env {
            applied.overridden.push(key.clone());
            continue;
        }
        let long = arg.get_long().expect("every key is a long option");
        for value in values {
            let mut argument = OsString::from(format!("--{long}"));
            if let Some(value) = value {
                argument.push("=");
                argument.push(value);
            }
            added.push(argument);
        }
        applied.used.push(key.clone());
    }
    let mut args = args;
    args.extend(added);
    Ok((args, Some(applied)))
}

/// Rewrites clap's error about a value that came from the config file so that it names the file
/// and the key (clap names the flag it was given as). `None`: not about the file's values.
pub fn explain(error: &clap::Error, applied: &Applied, command: &Command) -> Option<ConfigFileError> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else { return None };
    // `--retention-days <DAYS>` or `--memory`: the option's long name.
    let long = invalid.strip_prefix("--")?.split([' ', '=']).next()?;
    if !applied.used.iter().any(|key| key == long) {
        return None;
    }
    let serve = command.find_subcommand(SUBCOMMAND)?;
    let secret =
        serve.get_arguments().any(|arg| arg.get_long() == Some(long) && arg.is_hide_env_values_set());
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(_)) if secret => " (the value is not shown: a secret)".to_owned(),
        Some(ContextValue::String(value)) => format!(" {value:?}"),
        _ => String::new(),
    };
    let reason = std::error::Error::source(error)
        .map_or_else(|| error.kind().to_string(), |source| source.to_string());
    // Whatever the reason says, it must stay one line.
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(ConfigFileError {
        path: applied.path.clone(),
        message: format!("`{long}`: invalid value{value}: {reason}"),
    })
}

/// The ids of the options of `command` that `args` (the arguments after the subcommand) gives.
/// Clap's parse cannot tell this before the file is added: it refuses a command line whose
/// requirements only the file satisfies.
fn given_on_command_line<'a>(command: &'a Command, args: &[OsString]) -> Vec<&'a str> {
    let mut given = Vec::new();
    for arg in args {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or(long);
            let found = command.get_arguments().find(|option| {
                option.get_long() == Some(name)
                    || option.get_all_aliases().is_some_and(|aliases| aliases.contains(&name))
            });
            given.extend(found.map(|option| option.get_id().as_str()));
        } else if let Some(shorts) = arg.strip_prefix('-') {
            for short in shorts.chars() {
                let found = command.get_arguments().find(|option| {
                    option.get_short() == Some(short)
                        || option.get_all_short_aliases().is_some_and(|aliases| aliases.contains(&short))
                });
                given.extend(found.map(|option| option.get_id().as_str()));
            }
        }
    }
    given
}

/// The file `--config` names on the command line (`--config F` or `--config=F`), else its
/// environment variable.
fn config_path(config_arg: &Arg, args: &[OsString]) -> Option<PathBuf> {
    let long = format!("--{}", config_arg.get_long().expect("--config is a long option"));
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if *arg == *long {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix(&long)).and_then(|a| a.strip_prefix('='))
        {
            return Some(PathBuf::from(path));
        }
    }
    config_arg.get_env().and_then(std::env::var_os).filter(|path| !path.is_empty()).map(PathBuf::from)
}

fn read(path: &Path) -> Result<toml::Table, ConfigFileError> {
    let fail = |message: String| ConfigFileError { path: path.to_owned(), message };
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(CONFIG_FILE_BYTES_MAX + 1).read_to_string(&mut text))
        .map_err(|error| fail(format!("cannot read the config file: {error}")))?;
    if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(fail(format!("the config file is larger than {CONFIG_FILE_BYTES_MAX} bytes")));
    }
    toml::from_str::<toml::Table>(&text).map_err(|error| {
        let line = error.span().map(|span| text[..span.start].matches('\n').count() + 1);
        let message = error.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match line {
            Some(line) => fail(format!("line {line}: not valid TOML: {message}")),
            None => fail(format!("not valid TOML: {message}")),
        }
    })
}

/// The option a key of the file sets: the one whose long name is `key`.
fn option_of_key<'a>(serve: &'a Command, key: &str) -> Result<&'a Arg, String> {
    let settable = |arg: &&Arg| {
        arg.get_long().is_some()
            && arg.get_id() != CONFIG_OPTION
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    };
    if let Some(arg) = serve.get_arguments().filter(settable).find(|arg| arg.get_long() == Some(key)) {
        return Ok(arg);
    }
    if key == CONFIG_OPTION {
        return Err(format!("`{key}` cannot be set in a config file"));
    }
    let kebab = key.replace('_', "-");
    let hint = if serve.get_arguments().filter(settable).any(|arg| arg.get_long() == Some(kebab.as_str())) {
        format!(" (did you mean `{kebab}`? keys are the long option names)")
    } else {
        " (keys are the long names of `herald serve`'s options, as in `herald serve --help`)".to_owned()
    };
    Err(format!("unknown key `{key}`{hint}"))
}

/// What kind of TOML value an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A flag: `true` or `false`.
    Switch,
    /// An integer option: a TOML integer.
    Integer,
    /// A floating-point option: a TOML float or integer.
    Float,
    /// An option that takes `true` or `false` as its value (`--flag true`): a TOML boolean.
    Boolean,
    /// Anything else (text, paths, durations like `30d`, addresses, `on`/`off`): a string.
    Text,
}

fn kind_of(arg: &Arg) -> Kind {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return Kind::Switch;
    }
    let type_id = arg.get_value_parser().type_id();
    let integers = [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<isize>(),
    ];
    if integers.iter().any(|id| type_id == *id) {
        Kind::Integer
    } else if type_id == TypeId::of::<f64>() || type_id == TypeId::of::<f32>() {
        Kind::Float
    } else if type_id == TypeId::of::<bool>() {
        Kind::Boolean
    } else {
        Kind::Text
    }
}

/// The command-line values of `key = value` for `arg`: one per occurrence of the flag to add,
/// `None` for a flag without a value. A switch that says the flag's default adds nothing.
fn values_of(arg: &Arg, key: &str, value: &toml::Value) -> Result<Vec<Option<String>>, String> {
    let kind = kind_of(arg);
    let wrong = |expected: &str| format!("`{key}` must be {expected}, not {}", describe(value));
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let toml::Value::Boolean(on) = value else { return Err(wrong("true or false")) };
            let sets = matches!(arg.get_action(), ArgAction::SetTrue) == *on;
            Ok(if sets { vec![None] } else { Vec::new() })
        }
        ArgAction::Set => Ok(vec![Some(scalar(kind, value).ok_or_else(|| wrong(expected(kind)))?)]),
        ArgAction::Append => {
            let toml::Value::Array(items) = value else {
                return Err(wrong(&format!("an array of {}s", expected(kind).trim_start_matches("a "))));
            };
            items
                .iter()
                .map(|item| {
                    scalar(kind, item).map(Some).ok_or_else(|| {
                        format!(
                            "`{key}` must be an array of {}s, not one with {}",
                            expected(kind).trim_start_matches("a "),
                            describe(item)
                        )
                    })
                })
                .collect()
        }
        _ => Err(format!("`{key}` cannot be set in a config file")),
    }
}

fn expected(kind: Kind) -> &'static str {
    match kind {
        Kind::Switch | Kind::Boolean => "true or false",
        Kind::Integer => "a whole number",
        Kind::Float => "a number",
        Kind::Text => "a string",
    }
}

fn scalar(kind: Kind, value: &toml::Value) -> Option<String> {
    match (kind, value) {
        (Kind::Text, toml::Value::String(text)) => Some(text.clone()),
        (Kind::Integer | Kind::Float, toml::Value::Integer(n)) => Some(n.to_string()),
        (Kind::Float, toml::Value::Float(x)) => Some(x.to_string()),
        (Kind::Boolean, toml::Value::Boolean(on)) => Some(on.to_string()),
        _ => None,
    }
}

/// A value's TOML type, for messages (never the value: it may be a secret).
fn describe(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

#[cfg(unix)]
fn is_world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o004 != 0)
}

#[cfg(not(unix))]
fn is_world_readable(_: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn command() -> Command {
        crate::Cli::command()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write as _;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn expand_with(text: &str, extra: &[&str]) -> Result<Vec<String>, String> {
        let file = file(text);
        let mut args: Vec<OsString> = ["herald", "serve", "--config"].map(OsString::from).to_vec();
        args.push(file.path().into());
        args.extend(extra.iter().map(OsString::from));
        expand(&command(), args)
            .map(|(args, _)| args[4 + extra.len()..].iter().map(|a| a.to_str().unwrap().to_owned()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_kind_of_option_becomes_its_flag() {
        let added = expand_with(
            "listen = \"127.0.0.1:1\"\nmemory = true\nretention-days = 7\ntrusted-proxies = [\"10.0.0.0/8\", \"::1\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            added,
            [
                "--listen=127.0.0.1:1",
                "--memory",
                "--retention-days=7",
                "--trusted-proxies=10.0.0.0/8",
                "--trusted-proxies=::1"
            ]
        );
        assert_eq!(expand_with("memory = false", &[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_flag_on_the_command_line_wins_over_the_file() {
        assert_eq!(
            expand_with("listen = \"127.0.0.1:1\"\nnode-id = \"a\"", &["--listen", "x"]).unwrap(),
            ["--node-id=a"]
        );
        assert_eq!(expand_with("listen = \"127.0.0.1:1\"", &["--listen=x"]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_naming_the_key() {
        let error = expand_with("lisen = \"127.0.0.1:1\"", &[]).unwrap_err();
        assert!(error.contains("unknown key `lisen`"), "{error}");
        let error = expand_with("data_dir = \"/tmp\"", &[]).unwrap_err();
        assert!(error.contains("did you mean `data-dir`?"), "{error}");
        let error = expand_with("retention-days = \"7\"", &[]).unwrap_err();
        assert!(error.contains("`retention-days` must be a whole number, not a string"), "{error}");
        let error = expand_with("memory = 1", &[]).unwrap_err();
        assert!(error.contains("`memory` must be true or false"), "{error}");
        let error = expand_with("listen = 7300", &[]).unwrap_err();
        assert!(error.contains("`listen` must be a string"), "{error}");
        let error = expand_with("trusted-proxies = \"10.0.0.1\"", &[]).unwrap_err();
        assert!(error.contains("an array of strings"), "{error}");
        let error = expand_with("config = \"other.toml\"", &[]).unwrap_err();
        assert!(error.contains("`config` cannot be set"), "{error}");
        let error = expand_with("[serve]\nlisten = \"x\"", &[]).unwrap_err();
        assert!(error.contains("unknown key `serve`"), "{error}");
        let error = expand_with("listen = \n", &[]).unwrap_err();
        assert!(error.contains("line 1: not valid TOML") && !error.contains('\n'), "{error}");
    }

    /// Kinds read from any command (an option added later is one of these).
    #[test]
    fn kinds_follow_the_action_and_the_value_parser() {
        use clap::value_parser;
        let arg = |parser: clap::builder::ValueParser| Arg::new("x").long("x").value_parser(parser);
        assert_eq!(kind_of(&arg(value_parser!(bool))), Kind::Boolean);
        assert_eq!(kind_of(&arg(value_parser!(u16).into())), Kind::Integer);
        assert_eq!(kind_of(&arg(value_parser!(f64).into())), Kind::Float);
        assert_eq!(kind_of(&arg(value_parser!(PathBuf))), Kind::Text);
        assert_eq!(kind_of(&Arg::new("x").long("x").action(ArgAction::SetTrue)), Kind::Switch);
        let set = arg(value_parser!(bool)).action(ArgAction::Set);
        assert_eq!(values_of(&set, "x", &toml::Value::Boolean(false)).unwrap(), [Some("false".to_owned())]);
        assert!(values_of(&set, "x", &toml::Value::String("false".into())).is_err());
    }

    #[test]
    fn a_wrong_type_never_shows_the_value() {
        let error = expand_with("secret = 1234567", &[]).unwrap_err();
        assert!(!error.contains("1234567"), "{error}");
    }
}
