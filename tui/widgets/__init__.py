"""Widgets shared by the screens: form fields, help line, navigation bar, messages in place."""

from loradeck.tui.widgets.field import Field
from loradeck.tui.widgets.footer import KeysFooter
from loradeck.tui.widgets.help_line import HelpLine
from loradeck.tui.widgets.nav import NavBar

__all__ = ["Field", "HelpLine", "KeysFooter", "NavBar"]
