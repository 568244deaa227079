"""Every denial and warning text, as named format constants (style.md §5: one sentence, lower-case, subject first
with kind and quoted name, the rule as what is allowed, the offending value, then `; ` and the remedy; never
"denied", which the API server already says)."""

UNKNOWN_RESOURCE = "this webhook does not handle {resource}; check the rules of the webhook configuration"
