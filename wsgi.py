from photo_api import create_app

app = create_app()
