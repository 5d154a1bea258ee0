//! Which function calls may run on a replica: built-ins that neither write nor need a writable
//! transaction, plus the ones the configuration lists. Anything else (nextval, setval, advisory
//! locks, set_config, user functions...) sends its statement to the primary.

use super::object_name;
use sqlparser::ast::ObjectName;
use std::collections::HashSet;

/// Built-in read-only functions (pg_catalog), lowercase. Some SQL constructs that look like
/// calls (`EXTRACT`, `SUBSTRING ... FROM`, `TRIM`, `POSITION`, `CEIL`, `OVERLAY`, `CAST`,
/// `EXISTS`) are separate expressions in sqlparser and need no entry.
#[rustfmt::skip]
const BUILTIN: &[&str] = &[
    // aggregates
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "json_agg", "jsonb_agg",
    "json_object_agg", "jsonb_object_agg", "json_agg_strict", "jsonb_agg_strict", "bool_and",
    "bool_or", "every", "bit_and", "bit_or", "bit_xor", "stddev", "stddev_pop", "stddev_samp",
    "variance", "var_pop", "var_samp", "corr", "covar_pop", "covar_samp", "regr_slope",
    "regr_intercept", "regr_count", "regr_r2", "percentile_cont", "percentile_disc", "mode",
    "xmlagg", "any_value", "range_agg",
    // window functions
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    // conditional and comparison
    "coalesce", "nullif", "greatest", "least", "num_nulls", "num_nonnulls",
    // math
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power", "pow",
    "exp", "ln", "log", "log10", "mod", "div", "pi", "degrees", "radians", "sin", "cos", "tan",
    "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "gcd", "lcm", "factorial",
    "width_bucket", "random", "random_normal", "scale", "min_scale", "trim_scale",
    // strings
    "length", "char_length", "character_length", "octet_length", "bit_length", "lower", "upper",
    "initcap", "concat", "concat_ws", "substr", "substring", "left", "right", "lpad", "rpad",
    "ltrim", "rtrim", "btrim", "trim", "replace", "reverse", "repeat", "split_part", "strpos",
    "position", "starts_with", "translate", "format", "md5", "sha224", "sha256", "sha384", "sha512",
    "encode", "decode", "ascii", "chr", "quote_ident", "quote_literal", "quote_nullable", "to_hex",
    "regexp_replace", "regexp_match", "regexp_matches", "regexp_split_to_array",
    "regexp_split_to_table", "regexp_like", "regexp_count", "regexp_instr", "regexp_substr",
    "string_to_array", "string_to_table", "array_to_string", "unaccent", "overlay", "normalize",
    "convert_from", "convert_to", "get_byte", "set_byte", "bit_count", "similarity",
    "word_similarity", "uuid_generate_v4", "gen_random_uuid",
    // dates and times
    "now", "current_timestamp", "current_date", "current_time", "localtime", "localtimestamp",
    "statement_timestamp", "transaction_timestamp", "clock_timestamp", "timeofday", "date_trunc",
    "date_part", "extract", "age", "make_date", "make_time", "make_timestamp", "make_timestamptz",
    "make_interval", "to_char", "to_date", "to_timestamp", "to_number", "justify_days",
    "justify_hours", "justify_interval", "isfinite", "date_bin", "timezone", "date_add",
    "date_subtract",
    // arrays and ranges
    "array_length", "array_lower", "array_upper", "array_ndims", "array_dims", "array_position",
    "array_positions", "array_append", "array_prepend", "array_cat", "array_remove",
    "array_replace", "array_fill", "array_sample", "array_shuffle", "trim_array", "cardinality",
    "unnest", "generate_series", "generate_subscripts", "array", "row", "lower_inc", "upper_inc",
    "lower_inf", "upper_inf", "isempty", "range_merge", "int4range", "int8range", "numrange",
    "tsrange", "tstzrange", "daterange",
    // json
    "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
    "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object", "jsonb_object",
    "json_array_length", "jsonb_array_length", "json_each", "jsonb_each", "json_each_text",
    "jsonb_each_text", "json_extract_path", "jsonb_extract_path", "json_extract_path_text",
    "jsonb_extract_path_text", "json_object_keys", "jsonb_object_keys", "json_array_elements",
    "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text", "json_typeof",
    "jsonb_typeof", "json_strip_nulls", "jsonb_strip_nulls", "jsonb_set", "jsonb_set_lax",
    "jsonb_insert", "jsonb_pretty", "jsonb_path_query", "jsonb_path_query_array",
    "jsonb_path_query_first", "jsonb_path_exists", "jsonb_path_match", "json_populate_record",
    "jsonb_populate_record", "json_populate_recordset", "jsonb_populate_recordset",
    "json_to_record", "jsonb_to_record", "json_to_recordset", "jsonb_to_recordset",
    // full-text search
    "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery", "websearch_to_tsquery",
    "ts_rank", "ts_rank_cd", "ts_headline", "setweight", "strip", "numnode", "querytree",
    // session and system information
    "version", "current_setting", "current_database", "current_schema", "current_schemas",
    "current_user", "session_user", "user", "current_catalog", "current_role", "system_user",
    "pg_backend_pid", "pg_postmaster_start_time", "pg_conf_load_time", "inet_server_addr",
    "inet_server_port", "inet_client_addr", "inet_client_port", "pg_sleep", "pg_sleep_for",
    "pg_is_in_recovery", "pg_last_wal_replay_lsn", "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp", "pg_is_wal_replay_paused", "pg_wal_lsn_diff",
    "txid_current_snapshot", "pg_current_snapshot", "pg_snapshot_xmin", "pg_snapshot_xmax",
    "txid_snapshot_xmin", "txid_snapshot_xmax", "pg_jit_available", "pg_trigger_depth",
    "pg_encoding_to_char", "pg_char_to_encoding", "pg_client_encoding", "obj_description",
    "col_description", "shobj_description",
    // catalog and sizes (what drivers and psql ask when introspecting)
    "pg_typeof", "format_type", "to_regclass", "to_regtype", "to_regproc", "to_regprocedure",
    "to_regnamespace", "to_regrole", "pg_relation_size", "pg_total_relation_size", "pg_table_size",
    "pg_indexes_size", "pg_database_size", "pg_tablespace_size", "pg_column_size", "pg_size_pretty",
    "pg_size_bytes", "pg_relation_filenode", "pg_get_viewdef", "pg_get_indexdef",
    "pg_get_constraintdef", "pg_get_functiondef", "pg_get_function_arguments",
    "pg_get_function_result", "pg_get_function_identity_arguments", "pg_get_triggerdef",
    "pg_get_ruledef", "pg_get_expr", "pg_get_partkeydef", "pg_get_serial_sequence",
    "pg_get_userbyid", "pg_get_keywords", "pg_get_statisticsobjdef_columns", "pg_table_is_visible",
    "pg_type_is_visible", "pg_function_is_visible", "pg_index_column_has_property", "pg_has_role",
    "has_table_privilege", "has_schema_privilege", "has_database_privilege", "has_column_privilege",
    "has_any_column_privilege", "has_function_privilege", "has_sequence_privilege",
];

/// Functions that must run on the primary even if configured otherwise: they write, take
/// locks, change session state or need a transaction id.
#[rustfmt::skip]
const NEVER: &[&str] = &[
    "nextval", "setval", "currval", "lastval", "set_config", "pg_notify", "txid_current",
    "txid_current_if_assigned", "pg_current_xact_id", "pg_current_xact_id_if_assigned",
    "pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn", "pg_switch_wal",
    "pg_create_restore_point", "pg_advisory_lock", "pg_advisory_lock_shared",
    "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
    "pg_cancel_backend", "pg_terminate_backend", "pg_reload_conf", "lo_import", "lo_export",
    "lo_create", "lo_unlink", "lo_put", "lo_from_bytea", "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot", "pg_drop_replication_slot", "pg_logical_emit_message",
    "dblink_exec",
];

/// The functions one [`Classifier`](super::Classifier) lets run on a replica.
#[derive(Debug)]
pub(crate) struct ReadOnlyFunctions {
    builtin: HashSet<&'static str>,
    never: HashSet<&'static str>,
    /// Configured names without a schema: they match a call in any schema.
    bare: HashSet<Box<str>>,
    /// Configured `schema.name`s: they match that call and an unqualified call of `name`.
    qualified: HashSet<Box<str>>,
    /// The `name` parts of `qualified`.
    qualified_last: HashSet<Box<str>>,
}

impl ReadOnlyFunctions {
    /// The built-ins plus `configured` (matched case-insensitively).
    pub(crate) fn new(configured: &[String]) -> Self {
        let mut bare = HashSet::new();
        let mut qualified = HashSet::new();
        let mut qualified_last = HashSet::new();
        for name in configured.iter().map(|f| f.trim().to_lowercase()).filter(|f| !f.is_empty()) {
            match name.rsplit_once('.') {
                Some((_, last)) => {
                    qualified_last.insert(last.into());
                    qualified.insert(name.into_boxed_str());
                }
                None => {
                    bare.insert(name.into_boxed_str());
                }
            }
        }
        Self {
            builtin: BUILTIN.iter().copied().collect(),
            never: NEVER.iter().copied().collect(),
            bare,
            qualified,
            qualified_last,
        }
    }

    /// Whether a call of `name` may run on a replica.
    pub(crate) fn allows(&self, name: &ObjectName) -> bool {
        let full = object_name(name);
        let (schema, last) = match full.rsplit_once('.') {
            Some((s, l)) => (Some(s), l),
            None => (None, full.as_str()),
        };
        if self.never.contains(last) {
            return false;
        }
        let configured = self.bare.contains(last);
        match schema {
            None => configured || self.builtin.contains(last) || self.qualified_last.contains(last),
            Some("pg_catalog") => configured || self.builtin.contains(last),
            // A built-in name in another schema is someone else's function.
            Some(_) => configured || self.qualified.contains(full.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_function_is_both_read_only_and_never() {
        assert!(BUILTIN.iter().all(|f| !NEVER.contains(f) && *f == f.to_lowercase()));
    }
}
