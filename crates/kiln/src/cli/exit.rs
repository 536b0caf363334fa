//! kiln's documented exit codes (README.md, `kiln --help`).

/// What the process reports to its caller. Values are stable: scripts and CI depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success = 0,
    /// A build step failed, or `gc` could not remove something.
    Failure = 1,
    /// Bad command line or bad input: invalid flags, an unknown image, an output that exists.
    Usage = 2,
    /// kiln itself failed (state directory unwritable, a bug).
    Internal = 70,
    /// SIGINT or SIGTERM: the run stopped and cleaned up.
    Interrupted = 130,
}

impl ExitCode {
    /// Configuration errors share the usage code: both mean "fix your input".
    #[expect(non_upper_case_globals, reason = "reads as a variant at call sites")]
    pub const Config: ExitCode = ExitCode::Usage;
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}
