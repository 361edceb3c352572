"""Sphinx extension: the ``daskcal-parameters`` directive, a step's parameter table from its dataclass.

In a MyST page::

    ```{daskcal-parameters} resample
    ```

renders name, default, unit and description of every parameter of the step (several steps:
``saturation jump ramp_fit``, with a step column) from the fields' metadata
(:func:`daskcal._params.markdown_table`), so the table never disagrees with the code.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


class ParametersDirective(SphinxDirective):
    required_arguments = 1
    optional_arguments = 10
    has_content = False

    def run(self) -> list[nodes.Node]:
        from daskcal._params import STEP_CLASSES, markdown_table

        unknown = [step for step in self.arguments if step not in STEP_CLASSES]
        if unknown:
            raise self.error(f"daskcal-parameters: unknown steps {unknown}; expected some of {list(STEP_CLASSES)}")
        container = nodes.container(classes=["daskcal-parameters"])
        # a MyST page parses the nested text as Markdown (a GFM table)
        self.state.nested_parse(markdown_table(*self.arguments).splitlines(), self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("daskcal-parameters", ParametersDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
