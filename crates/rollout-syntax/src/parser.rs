//! The private pest parser. Nothing from pest leaves this module and `lower.rs`.

use pest_derive::Parser;

#[derive(Parser)]
#[grammar = "../../grammar/rollout.pest"]
pub(crate) struct RolloutParser;

impl Rule {
    /// How a rule is named to users in "expected ..." messages; `None` hides it.
    pub(crate) fn display(self) -> Option<&'static str> {
        use Rule::*;
        Some(match self {
            EOI => "end of file",
            file | rollout | kw_rollout => "`rollout`",
            settings_block | block_kw => "`target`, `prometheus`, `evaluation`",
            kw_target => "`target`",
            kw_prometheus => "`prometheus`",
            kw_evaluation => "`evaluation`",
            setting => "a setting (`name = value`)",
            value => "a value (string, number, `true`/`false` or a word)",
            use_decl | kw_use => "`use`",
            metric_decl | kw_metric => "`metric`",
            metric_query => "`{`",
            metric_derived => "`=`",
            rule_decl | kw_rule => "`rule`",
            when_stmt | kw_when => "`when`",
            confidence | kw_with => "`with confidence`",
            kw_confidence => "`confidence`",
            detect | kw_detect => "`detect`",
            for_stmt | kw_for => "`for`",
            failures_stmt | kw_failures => "`failures`",
            failure_mode => "`consecutive` or `total`",
            kw_consecutive => "`consecutive`",
            kw_total => "`total`",
            require_stmt | kw_require => "`require`",
            action_stmt | kw_action => "`action`",
            window_stmt | kw_window => "`window`",
            action => "`rollback`, `pause` or `warn`",
            kw_rollback => "`rollback`",
            kw_pause => "`pause`",
            kw_warn => "`warn`",
            on_decl | kw_on => "`on`",
            failure_kind => "`no_data`, `stale_data`, `query_error` or `inconclusive`",
            kw_no_data => "`no_data`",
            kw_stale_data => "`stale_data`",
            kw_query_error => "`query_error`",
            kw_inconclusive => "`inconclusive`",
            on_response => "`hold`, `rollback`, `pause` or `warn`",
            on_hold | hold_step | kw_hold => "`hold`",
            kw_then => "`then`",
            steps_decl | kw_steps => "`steps`",
            traffic_step | kw_traffic => "`traffic`",
            hold_until | kw_until => "`until`",
            kw_max => "`max`",
            else_action | kw_else => "`else`",
            overrides => "`{`",
            approval_step | kw_approval => "`approval`",
            promote_step | kw_promote => "`promote`",
            expr => "an expression",
            paren => "`(`",
            path => "a name such as `canary.error_rate`",
            op_or | kw_or => "`or`",
            op_and | kw_and => "`and`",
            op_not | kw_not => "`not`",
            op_ge => "`>=`",
            op_le => "`<=`",
            op_eq => "`==`",
            op_ne => "`!=`",
            op_gt => "`>`",
            op_lt => "`<`",
            op_add => "`+`",
            op_sub | op_neg => "`-`",
            op_mul => "`*`",
            op_div => "`/`",
            quantity | number | compat_spaced_unit => "a number such as `5m`, `10%` or `1.5`",
            unit_suffix => "a unit (`ms`, `s`, `m`, `h`, `d`, `%`)",
            boolean => "`true` or `false`",
            ident => "a name",
            string | raw_string | plain_string => "a string",
            plain_inner | raw_inner => "string text",
            compat_op | compat_step | compat_step_kw | compat_item | compat_item_kw
            | rest_of_line | WHITESPACE | ident_char | reserved | compat_unit_word => {
                return None;
            }
            item => {
                "a declaration (`target`, `prometheus`, `evaluation`, `use`, `metric`, `rule`, `on`, `steps`)"
            }
            rule_stmt => "`when`, `for`, `failures`, `require`, `action` or `window`",
            step => "a step (`traffic`, `hold`, `approval`, `promote`)",
            duration_value => "a duration such as `5m`",
            prefix | infix | operand => "an expression",
        })
    }
}
