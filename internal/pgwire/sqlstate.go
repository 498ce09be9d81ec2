// SQLSTATE codes: every one the proxy and the pool report to clients,
// each defined once.

package pgwire

// SQLSTATE codes (PostgreSQL's errcodes.txt names in the comments) of the
// errors pgsidecar itself reports.
const (
	CodeSuccessfulCompletion       = "00000" // successful_completion (the console's notices)
	CodeFeatureNotSupported        = "0A000" // feature_not_supported
	CodeConnectionFailure          = "08006" // connection_failure
	CodeProtocolViolation          = "08P01" // protocol_violation
	CodeInvalidAuthorization       = "28000" // invalid_authorization_specification
	CodeInvalidPassword            = "28P01" // invalid_password
	CodeInvalidCatalogName         = "3D000" // invalid_catalog_name (unknown database)
	CodeInvalidSQLStatementName    = "26000" // invalid_sql_statement_name
	CodeDuplicatePreparedStatement = "42P05" // duplicate_prepared_statement
	CodeTooManyConnections         = "53300" // too_many_connections
	CodeProgramLimitExceeded       = "54000" // program_limit_exceeded
	CodeQueryCanceled              = "57014" // query_canceled
	CodeAdminShutdown              = "57P01" // admin_shutdown
	CodeCrashShutdown              = "57P02" // crash_shutdown
	CodeCannotConnectNow           = "57P03" // cannot_connect_now
	CodeIdleInTransactionTimeout   = "25P03" // idle_in_transaction_session_timeout
	CodeInFailedSQLTransaction     = "25P02" // in_failed_sql_transaction (a Parse of a name in use, in an aborted transaction)
	CodeIdleSessionTimeout         = "57P05" // idle_session_timeout
	CodeSyntaxError                = "42601" // syntax_error (unknown admin console command)
	CodeInsufficientPrivilege      = "42501" // insufficient_privilege (admin.stats_users)
	CodeConfigFileError            = "F0000" // config_file_error (console RELOAD failed)
	// Server errors the proxy reads: a prepared statement whose type is
	// gone ("cache lookup failed for type") is shared no more.
	CodeInternalError = "XX000" // internal_error
	// A parameter that is not text in the connection's encoding (an
	// invalid byte sequence), or has no equivalent in the server's: the
	// passthrough auth query's role name, which then names no role.
	CodeCharacterNotInRepertoire = "22021" // character_not_in_repertoire
	CodeUntranslatableCharacter  = "22P05" // untranslatable_character
)
