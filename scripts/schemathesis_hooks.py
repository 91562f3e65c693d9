"""A check of scripts/schemathesis beside schemathesis's own.

scripts/schemathesis.toml lets six operations answer 400 to schema-valid
data, for reasons no schema can express. This check keeps that allowance to
exactly those reasons: any other 400 to a schema-valid request (a length,
pattern or type the document does not declare) still fails the run.
"""

import schemathesis

# Operation -> the `code`s a schema-valid request may be refused with.
REFUSALS_OF_VALID_DATA = {
    # The generator repeats addresses ("not taken yet" is no schema), and
    # draws the two passwords apart (no OpenAPI schema ties two fields).
    "POST /api/auth/signup": {"duplicate_email", "passwords_differ"},
    # "An MP4 of 20-60 s, shorter side >= 1080 px" is no schema.
    "POST /api/videos/upload": {
        "invalid_file_type",
        "duration_out_of_range",
        "resolution_too_low",
    },
    # The deployment's upload limit is no constant of the document.
    "POST /api/videos/uploads": {"file_too_large"},
    # What the client stored decides these, not the request's shape.
    "POST /api/videos/uploads/{upload_id}/complete": {
        "upload_size_mismatch",
        "invalid_file_type",
        "duration_out_of_range",
        "resolution_too_low",
    },
    # A video's state and owner decide these, not the request's shape.
    "DELETE /api/videos/{video_id}": {"video_published"},
    "POST /api/public/videos/{video_id}/vote": {"own_video", "already_voted"},
}


@schemathesis.check
def valid_data_is_refused_only_for_reasons_no_schema_states(ctx, response, case):
    allowed = REFUSALS_OF_VALID_DATA.get(case.operation.label)
    meta = case.meta
    if allowed is None or meta is None or response.status_code != 400:
        return None
    if not meta.generation.mode.is_positive:
        return None
    try:
        code = response.json().get("code")
    except Exception:  # noqa: BLE001 - a body that is not JSON is its own failure
        code = None
    if code not in allowed:
        raise AssertionError(
            f"A schema-valid request was refused with 400 `{code}`; for "
            f"{case.operation.label} only {sorted(allowed)} are expected "
            "(see scripts/schemathesis.toml)"
        )
    return None
