"""The upload form of the bookings import."""
from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import SelectField

from ..invites.forms import timezone_choices


class UploadForm(FlaskForm):
    file = FileField("Bookings file (CSV)", validators=[FileRequired("Choose a CSV file to upload.")],
                     description="UTF-8 or Windows-1252; commas, semicolons or tabs; up to 20 MB.")
    timezone = SelectField("Time zone of rows without one", choices=timezone_choices, validate_choice=True)
