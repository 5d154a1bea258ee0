//! Functions known to be safe on a replica: built-ins that neither write nor depend on session
//! state a replica cannot have, plus the ones the configuration lists. Anything else (nextval,
//! setval, advisory locks, set_config, user functions...) sends its statement to the primary.

use super::object_name;
use sqlparser::ast::ObjectName;
use std::collections::HashSet;

/// Built-in read-only functions (pg_catalog), lowercase.
const BUILTIN: &[&str] = &[
    // aggregates
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "json_agg", "jsonb_agg",
    "json_object_agg", "jsonb_object_agg", "bool_and", "bool_or", "every", "bit_and", "bit_or",
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "corr", "covar_pop",
    "covar_samp", "percentile_cont", "percentile_disc", "mode", "xmlagg",
    // window functions
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    // conditional and comparison
    "coalesce", "nullif", "greatest", "least", "num_nulls", "num_nonnulls",
    // math
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power", "pow",
    "exp", "ln", "log", "log10", "mod", "div", "pi", "degrees", "radians", "sin", "cos", "tan",
    "asin", "acos", "atan", "atan2", "gcd", "lcm", "width_bucket", "random", "scale",
    // strings
    "length", "char_length", "character_length", "octet_length", "bit_length", "lower", "upper",
    "initcap", "concat", "concat_ws", "substr", "substring", "left", "right", "lpad", "rpad",
    "ltrim", "rtrim", "btrim", "trim", "replace", "reverse", "repeat", "split_part", "strpos",
    "position", "starts_with", "translate", "format", "md5", "sha256", "sha512", "encode",
    "decode", "ascii", "chr", "quote_ident", "quote_literal", "quote_nullable", "to_hex",
    "regexp_replace", "regexp_match", "regexp_matches", "regexp_split_to_array",
    "regexp_split_to_table", "string_to_array", "array_to_string", "unaccent", "overlay",
    // dates and times
    "now", "current_timestamp", "current_date", "current_time", "localtime", "localtimestamp",
    "statement_timestamp", "transaction_timestamp", "clock_timestamp", "timeofday", "date_trunc",
    "date_part", "extract", "age", "make_date", "make_time", "make_timestamp", "make_timestamptz",
    "make_interval", "to_char", "to_date", "to_timestamp", "to_number", "justify_days",
    "justify_hours", "justify_interval", "isfinite", "date_bin",
    // arrays
    "array_length", "array_lower", "array_upper", "array_ndims", "array_dims", "array_position",
    "array_positions", "array_append", "array_prepend", "array_cat", "array_remove",
    "array_replace", "cardinality", "unnest", "generate_series", "generate_subscripts",
    // json
    "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
    "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object", "jsonb_object",
    "json_array_length", "jsonb_array_length", "json_each", "jsonb_each", "json_each_text",
    "jsonb_each_text", "json_extract_path", "jsonb_extract_path", "json_extract_path_text",
    "jsonb_extract_path_text", "json_object_keys", "jsonb_object_keys", "json_array_elements",
    "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text",
    "json_typeof", "jsonb_typeof", "jsonb_set", "jsonb_insert", "jsonb_strip_nulls",
    "jsonb_pretty", "jsonb_path_query", "jsonb_path_exists", "jsonb_path_match",
    "json_populate_record", "jsonb_populate_record", "json_to_record", "jsonb_to_record",
    // types, system information
    "cast", "pg_typeof", "format_type", "version", "current_setting", "current_database",
    "current_schema", "current_schemas", "current_user", "session_user", "current_catalog",
    "pg_backend_pid", "pg_postmaster_start_time", "pg_conf_load_time", "inet_server_addr",
    "inet_server_port", "inet_client_addr", "inet_client_port", "pg_sleep",
    "pg_is_in_recovery", "pg_last_wal_replay_lsn", "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp", "pg_relation_size", "pg_total_relation_size",
    "pg_table_size", "pg_indexes_size", "pg_database_size", "pg_size_pretty",
    "pg_get_viewdef", "pg_get_indexdef", "pg_get_constraintdef", "pg_get_functiondef",
    "pg_get_userbyid", "obj_description", "col_description", "has_table_privilege",
    "has_schema_privilege", "has_database_privilege", "has_column_privilege", "to_regclass",
    "to_regtype", "txid_current_snapshot", "pg_current_snapshot", "uuid_generate_v4",
    "gen_random_uuid", "exists", "any", "all", "row", "array",
    // full-text search
    "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery", "websearch_to_tsquery",
    "ts_rank", "ts_rank_cd", "ts_headline", "setweight",
];

/// Whether a call of `name` may run on a replica.
pub(crate) fn is_read_only(name: &ObjectName, configured: &HashSet<String>) -> bool {
    let full = object_name(name);
    if configured.contains(&full) {
        return true;
    }
    let (schema, last) = match full.rsplit_once('.') {
        Some((s, l)) => (Some(s), l),
        None => (None, full.as_str()),
    };
    if schema.is_none() && configured.iter().any(|c| c.rsplit_once('.').is_some_and(|(_, l)| l == last)) {
        return true;
    }
    if schema.is_some_and(|s| s != "pg_catalog") {
        return false;
    }
    configured.contains(last) || BUILTIN.contains(&last)
}
