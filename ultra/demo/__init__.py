"""``ultra-demo``: a local browser page (gradio) that segments a photo, selects the object under a click and
shows what a layer's graphs group.

- ``tasks``: what each tab computes, as plain functions of a photo file (no gradio).
- ``examples``: the example photos the page offers, generated on first use.
- ``app``: the gradio Blocks page: its tabs, their events, and user errors as messages in the page.
"""
