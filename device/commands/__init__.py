"""The subcommands of `anc-device`: each parses its options, composes the pieces it needs and
reports; nothing here is imported by the layers below."""
