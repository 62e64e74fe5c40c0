"""Widgets shared by the screens: form fields, help line, navigation bar, messages in place."""

from tui.widgets.field import Field
from tui.widgets.footer import KeysFooter
from tui.widgets.help_line import HelpLine
from tui.widgets.nav import NavBar

__all__ = ["Field", "HelpLine", "KeysFooter", "NavBar"]
