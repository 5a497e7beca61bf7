//! The one error type of `iii worker add/remove/list/clear/start/stop/restart/status/logs/exec`, printed as `error: [Wxxx] message`
//! with the W-codes of workers-and-sandboxes spec section 7.6.

use super::config_file::ConfigFileError;
use super::lock::LockError;
use super::names::NameError;
use super::registry_api::ApiError;

/// Why a worker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("{0}")]
    InvalidSource(String),
    #[error("{0}")]
    Consent(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Running(String),
    #[error("{0}")]
    NotRunning(String),
    /// A worker was installed but did not come up within the wait.
    #[error("{0}")]
    StartTimeout(String),
    #[error("{0}")]
    StopTimeout(String),
    #[error("another `iii worker` command holds {0}; wait for it to finish and retry")]
    LockBusy(String),
    #[error("{0}")]
    ConfigIo(String),
    #[error("{0}")]
    ConfigParse(String),
    #[error("{0}")]
    LockIo(String),
    #[error("{0}")]
    Lockfile(String),
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    OciPull(String),
    #[error("{0}")]
    Internal(String),
}

impl WorkerError {
    /// The W-code shown in brackets.
    pub fn code(&self) -> &'static str {
        match self {
            WorkerError::Name(_) => "W100",
            WorkerError::InvalidSource(_) => "W101",
            WorkerError::Consent(_) => "W104",
            WorkerError::NotFound(_) => "W110",
            WorkerError::AlreadyExists(_) => "W111",
            WorkerError::BadRequest(_) => "W105",
            WorkerError::Running(_) => "W114",
            WorkerError::NotRunning(_) => "W113",
            WorkerError::StartTimeout(_) => "W161",
            WorkerError::StopTimeout(_) => "W162",
            WorkerError::LockBusy(_) => "W120",
            WorkerError::LockIo(_) => "W121",
            WorkerError::ConfigIo(_) => "W130",
            WorkerError::ConfigParse(_) => "W131",
            WorkerError::Registry(_) => "W140",
            WorkerError::OciPull(_) => "W141",
            WorkerError::Lockfile(_) => "W150",
            WorkerError::Internal(_) => "W900",
        }
    }

    /// Prints `error: [Wxxx] message` to stderr.
    pub fn print(&self) {
        eprintln!("error: [{}] {self}", self.code());
    }
}

impl From<ConfigFileError> for WorkerError {
    fn from(e: ConfigFileError) -> Self {
        match e {
            ConfigFileError::Name(n) => WorkerError::Name(n),
            ConfigFileError::NotFound { .. } => WorkerError::NotFound(e.to_string()),
            ConfigFileError::BadConfigBlock { .. } => WorkerError::ConfigParse(e.to_string()),
            other => WorkerError::ConfigIo(other.to_string()),
        }
    }
}

impl From<LockError> for WorkerError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Read { .. } | LockError::Write { .. } => WorkerError::LockIo(e.to_string()),
            other => WorkerError::Lockfile(other.to_string()),
        }
    }
}

impl From<ApiError> for WorkerError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotFound(..) => WorkerError::NotFound(e.to_string()),
            other => WorkerError::Registry(other.to_string()),
        }
    }
}
