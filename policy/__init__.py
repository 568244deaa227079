"""Pure decisions of pcidevices: object views, naming rules and admission rules. No I/O, no clients."""
