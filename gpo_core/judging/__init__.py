"""Judging: two response sets compared side by side on the same prompts (:mod:`.comparison`), by
a judge (:mod:`.judges`, :mod:`.chat`) that one factory builds from a spec's judge settings
(:mod:`.factory`, :mod:`.settings`), with templates (:mod:`.templates`), endpoint URLs and errors
(:mod:`.endpoints`), and a judge's own accuracy on labelled pairs (:mod:`.evaluation`)."""
