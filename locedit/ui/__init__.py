"""The web app (``locedit ui``): :mod:`locedit.ui.app` runs edits through the CLI's own command;
:mod:`locedit.ui.page` is the Gradio page. Gradio is imported only when the page is built."""
