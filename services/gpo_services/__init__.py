"""The platform's services: thin processes around the gpo_core stages that talk only through Redis
and the artifact store."""
