"""`Report`: the base of the typed results that are also JSON files (run stats, the box self-check, the gate)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class Report(BaseModel):
    """A typed result whose `doc()` is the JSON it is written as, key for key and in order.

    Fields named in `omit_none` are left out of the JSON while None, as the dicts these models replace left
    them out. Read a report by its attributes; `doc()` is its JSON form."""

    model_config = ConfigDict(populate_by_name=True)
    omit_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self.omit_none:
            key = type(self).model_fields[name].alias or name
            if data.get(key, 0) is None:
                del data[key]
        return data

    def doc(self) -> dict[str, Any]:
        """The JSON form: what the file holds."""
        return self.model_dump(mode="json", by_alias=True)
